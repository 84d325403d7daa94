"""vLLM (CPU) loads the tiny policy and samples word-like, varied answers from chat-templated prompts.

Run as a test (slow: a vLLM engine starts in ~20 s) or by hand: ``python tests/test_assets_vllm.py POLICY_DIR``.
vLLM runs in a subprocess, as a plain script with ``LLM(...)`` under ``if __name__ == "__main__"``.
"""

import json
import os
import subprocess
import sys

import pytest

PROMPTS = ["Explain bees.", "Write a short note about volcanoes.", "Compare cats and dogs.",
           "What should a beginner know about chess?"]


def sample_with_vllm(policy_dir: str) -> dict:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from prefloop.core.templates import render_prompt

    tok = AutoTokenizer.from_pretrained(policy_dir)
    texts = [render_prompt([{"role": "user", "content": p}], "tokenizer", tok) for p in PROMPTS]
    llm = LLM(model=policy_dir, dtype="float32", max_model_len=256, enforce_eager=True,
              kv_cache_memory_bytes=256 * 1024**2)
    outs = llm.generate(texts, SamplingParams(n=4, temperature=1.0, max_tokens=96))
    return {"prompt_ids": [o.prompt_token_ids for o in outs],
            "samples": [[c.text for c in o.outputs] for o in outs],
            "finish": [[c.finish_reason for c in o.outputs] for o in outs]}


@pytest.mark.slow
def test_vllm_samples_from_the_tiny_policy(tiny_assets):
    from prefloop.tinyworld import topics as T

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    proc = subprocess.run([sys.executable, __file__, str(tiny_assets.policy)], capture_output=True, text=True,
                          timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))  # vLLM logs to stdout too
    out = json.loads(line[len("RESULT "):])
    bos = json.loads((tiny_assets.policy / "config.json").read_text())["bos_token_id"]
    assert all(ids[0] == bos and ids[1] != bos for ids in out["prompt_ids"])  # exactly one BOS
    flat = [s for group in out["samples"] for s in group]
    assert sum(f == "stop" for group in out["finish"] for f in group) >= 0.9 * len(flat)
    known = set(T.WORD_TOPIC) | {w for s in T.SENTENCES + T.OPENERS + T.DIGRESSIONS for w in T.words_of(s)}
    words = [w.strip(".,").lower() for s in flat for w in s.split()]
    assert words and sum(w in known for w in words) / len(words) > 0.8
    assert all(len(set(group)) >= 3 for group in out["samples"])  # n=4 samples differ
    print("\n" + "\n".join(f"{p} -> {g[0]!r}" for p, g in zip(PROMPTS, out["samples"])))


if __name__ == "__main__":
    print("RESULT " + json.dumps(sample_with_vllm(sys.argv[1])), flush=True)

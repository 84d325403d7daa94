"""The cluster recipes' path on real architectures shrunk in width and depth (tests/builders.py), on CPU:

- a Mistral-shaped policy with ``policy.dtype: bfloat16`` through DPO on Ray Train (2 workers, FSDP2 with its
  bf16 mixed-precision policy and a live, sharded bf16 reference), saved in bf16, then loaded by vLLM in bf16
  and swapped in place with ``reload_weights``: greedy output changes to the trained weights';
- the UltraRM-shaped reward model (LlamaRewardModel layout, sharded .bin) in the rollout's scorer stage.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from prefloop.app.storage.rundir import RunDir
from prefloop.core.config import parse_recipe
from tests.builders import TOPICS as TINY_TOPICS
from tests.builders import committed_rollout, mistral_policy, preference_pairs, ultrarm

pytestmark = pytest.mark.ray
TOPICS = TINY_TOPICS[:8]


def pairs():
    return preference_pairs("tell me about {t}", "{t} is good and kind", "no no bad", TOPICS)


def test_mistral_bf16_dpo_fsdp_then_vllm_reload(ray_cluster, tmp_path):
    from safetensors import safe_open

    from prefloop.app.rounds.round import Round
    from prefloop.app.rounds.train import run_train

    policy = mistral_policy(tmp_path / "Mistral-7B-Instruct-v0.2")
    run = RunDir(tmp_path / "run")
    committed_rollout(run, pairs(), kto=False)
    recipe = parse_recipe({
        "name": "mistral-bf16", "run_dir": str(run.root), "seed": 0, "data": {"train": "unused"},
        "policy": {"model": str(policy), "chat_template": "mistral", "dtype": "bfloat16"},
        "scorer": {"kind": "function", "function": "m:f"},
        "train": {"method": "dpo", "lr": 2e-2, "epochs": 2, "micro_batch_size": 4, "max_prompt_len": 32,
                  "max_response_len": 16, "strategy": "fsdp", "reference_mode": "live", "reference": "base",
                  "num_workers": 2, "checkpoint_every_steps": 100, "log_every_steps": 100}}, "test")
    trained = run_train(Round.of(recipe))
    rows = [json.loads(x) for x in (trained / "train_metrics.jsonl").read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    with safe_open(str(trained / "model.safetensors"), framework="pt") as f:  # saved in the policy's dtype
        assert {f.get_tensor(k).dtype for k in list(f.keys())} == {torch.bfloat16}
    script = tmp_path / "gen.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        if __name__ == "__main__":
            from vllm import SamplingParams
            from prefloop.actors.vllm_engine import build_llm, reload_in_place
            from prefloop.core.round_settings import EngineSettings
            llm = build_llm(sys.argv[1], EngineSettings(dtype="bfloat16", max_model_len=128, kv_cache_gb=1 / 16),
                            seeded_requests=False,
                            in_process=True)
            prompts = ["[INST] tell me about cats [/INST]", "[INST] tell me about boats [/INST]"]
            params = SamplingParams(max_tokens=8, temperature=0.0)
            first = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
            reload_in_place(llm, sys.argv[2])  # the engine prefloop builds (in-process on CPU)
            second = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
            print("RESULT " + json.dumps([list(map(list, first)), list(map(list, second))]))
    """))
    proc = subprocess.run([sys.executable, str(script), str(policy), str(trained)], capture_output=True, text=True,
                          timeout=600, check=False)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    first, second = json.loads(line[0][len("RESULT "):])
    assert all(first) and all(second)
    assert first != second  # the in-place swap serves the trained weights


def test_ultrarm_shape_in_the_scorer_stage(ray_cluster, tmp_path):
    from prefloop.actors.scorers import RewardModelScorer
    from prefloop.app.dataflow.pipeline import run_steps, scorer_step

    rm = ultrarm(tmp_path / "UltraRM-13b")
    recipe = parse_recipe({"name": "rm", "run_dir": str(tmp_path / "run"), "policy": {"model": "unused"},
                           "data": {"train": "unused"},
                           "scorer": {"kind": "reward_model", "model": str(rm), "chat_template": "ultrarm",
                                      "batch_size": 2}}, "test")
    rows = [{"prompt_id": f"p{i}", "prompt": f"tell me about {t}",
             "messages": json.dumps([{"role": "user", "content": f"tell me about {t}"}]),
             "candidates": [f"{t} is good", "no", f"very warm {t} and tea please"]} for i, t in enumerate(TOPICS)]
    out = {r["prompt_id"]: list(r["scores"]) for r in run_steps(rows, [scorer_step(recipe)], 300, "rm stage")}
    direct = RewardModelScorer(str(rm), chat_template="ultrarm", batch_size=3, device="cpu")
    for r in rows:
        want = direct.score([json.loads(r["messages"])], [r["candidates"]])[0]
        assert out[r["prompt_id"]] == pytest.approx(want, abs=1e-4)

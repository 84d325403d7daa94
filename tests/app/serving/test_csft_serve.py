"""A conditional-SFT model is served with its control token: Serve appends ``<|good|>`` (named by the model's
prefloop_model.json) to the rendered prompt, so its answers are the answers to ``prompt <|good|>``.

Checked against transformers: greedy answers for the prompt WITH the token match what Serve returns, and the
prompt token count Serve reports is the count with the token (one more than without)."""

import json

import pytest

from prefloop.app.serving.serve import serve_run_dir, stop_serving
from prefloop.app.storage.model_files import stamp_model
from prefloop.core.templates import render_prompt
from tests.builders import served_run

pytestmark = pytest.mark.ray
PROMPTS = ["Tell me about cats.", "Tell me about rivers."]


def csft_model(src, out):
    """The tiny policy with <|good|>/<|bad|> in vocabulary and embeddings (as app.train does) and its stamp."""
    from prefloop.app.rounds.train import add_control_tokens

    add_control_tokens(str(src), out)
    stamp_model(out, "tokenizer", "csft")
    return out


def hf_greedy(model_dir, prompt, control, max_tokens=8):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()
    text = render_prompt([{"role": "user", "content": prompt}], "tokenizer", tok) + control
    ids = tok(text, add_special_tokens=True, return_tensors="pt")["input_ids"]
    gen = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
    return tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True), ids.shape[1]


def test_served_csft_model_answers_with_its_control_token(ray_cluster, tiny_assets, tmp_path):
    from ray import serve

    model = csft_model(tiny_assets.policy, tmp_path / "csft")
    raw = {"name": "csft-serve", "run_dir": str(tmp_path / "run"),
           "policy": {"model": str(tiny_assets.policy), "chat_template": "tokenizer"},
           "data": {"train": "unused.jsonl", "max_prompt_tokens": 48},
           "rollout": {"max_tokens": 16, "max_model_len": 128}, "scorer": {"kind": "function", "function": "a:b"}}
    run = served_run(tmp_path / "run", raw, {0: model}, method="csft")
    served = serve_run_dir(run.root, port=18431, timeout_s=300)
    try:
        handle = serve.get_app_handle(served.name)
        for prompt in PROMPTS:
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "temperature": 0}
            out = handle.complete.remote(body).result(timeout_s=120)
            with_token, n_with = hf_greedy(run.stage_dir(0, "model"), prompt, "<|good|>")
            _, n_without = hf_greedy(run.stage_dir(0, "model"), prompt, "")
            assert out["usage"]["prompt_tokens"] == n_with == n_without + 1, json.dumps(out)
            assert out["choices"][0]["message"]["content"] == with_token
    finally:
        stop_serving(served.name)
        serve.shutdown()

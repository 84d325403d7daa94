"""A conditional-SFT model is served with its control token: Serve appends ``<|good|>`` (named by the model's
prefloop_model.json) to the rendered prompt, once, so it is asked exactly what it was trained on.

The expected prompt is the training text, built by the trainer's own path (``prepare_examples`` on a
desirable example, tokenised by ``encode``) with the tokenizer the cSFT round trained with, not a rendering of
this test's: Serve's prompt token count is that prompt's, and its greedy answers are transformers' greedy
answers to those tokens."""

import json
import shutil

import pytest

from prefloop.app.serving.serve import serve_run_dir, stop_serving
from prefloop.app.storage.model_files import stamp_model
from tests.builders import served_run

pytestmark = pytest.mark.ray
PROMPTS = ["Tell me about cats.", "Tell me about rivers."]


def csft_model(src, tmp_path):
    """The tiny policy with <|good|>/<|bad|> in vocabulary and embeddings (the round's start model, as app.train
    makes it) and, beside it, the same weights saved as a trained cSFT model (its tokenizer stamped)."""
    from prefloop.app.rounds.train import add_control_tokens

    start = add_control_tokens(str(src), tmp_path / "start")
    shutil.copytree(start, tmp_path / "csft")
    stamp_model(tmp_path / "csft", "tokenizer", "csft")
    return start, tmp_path / "csft"


def trained_prompt_ids(start, prompt, tmp_path):
    """The prompt tokens the cSFT round trained a desirable answer to ``prompt`` on: the trainer's path."""
    from transformers import AutoTokenizer

    from prefloop.actors.train_model import encode
    from prefloop.app.rounds.train import prepare_examples
    from prefloop.core.train_config import TrainConfig
    from prefloop.core.train_data import read_train_rows

    src = tmp_path / "prefs.jsonl"
    src.write_text(json.dumps({"prompt": prompt, "chosen": "Good.", "rejected": "Bad."}) + "\n")
    cfg = TrainConfig(method="csft", max_prompt_len=48, max_response_len=8)
    tok = AutoTokenizer.from_pretrained(start)
    [good] = [ex for ex in prepare_examples(read_train_rows(src), cfg, tok, "tokenizer", 0) if ex["label"]]
    enc = encode(tok, [good["prompt_text"]], [good["completion"]], cfg)
    return enc["input_ids"][0, :int(enc["prompt_lengths"][0])]


def hf_greedy(model_dir, ids, max_tokens=8):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()
    gen = model.generate(ids[None], attention_mask=ids[None] * 0 + 1, max_new_tokens=max_tokens, do_sample=False)
    return tok.decode(gen[0, len(ids):], skip_special_tokens=True)


def test_served_csft_model_answers_with_its_control_token(ray_cluster, tiny_assets, tmp_path):
    from ray import serve

    from transformers import AutoTokenizer

    start, model = csft_model(tiny_assets.policy, tmp_path)
    good_id = AutoTokenizer.from_pretrained(model).convert_tokens_to_ids("<|good|>")
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
            trained = trained_prompt_ids(start, prompt, tmp_path)
            assert trained.tolist().count(good_id) == 1
            assert out["usage"]["prompt_tokens"] == len(trained), json.dumps(out)
            assert out["choices"][0]["message"]["content"] == hf_greedy(run.stage_dir(0, "model"), trained)
    finally:
        stop_serving(served.name)
        serve.shutdown()

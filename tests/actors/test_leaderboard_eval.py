"""The leaderboard step's lm_eval run (actors/leaderboard_eval.py) on the tiny policy and the local ARC-style task
(tinyworld/data/leaderboard), checked against scores computed here by hand with transformers: each choice's
log-likelihood after the prompt, acc (the likeliest choice) and acc_norm (the likeliest per character), as
lm_eval's multiple-choice tasks define them."""

from __future__ import annotations

import functools
import json

import pytest

from prefloop.actors.leaderboard_eval import evaluate
from tests.paths import ROOT

pytestmark = pytest.mark.models
TASK_DIR = ROOT / "tinyworld" / "data" / "leaderboard"


def spec(shots: int) -> dict:
    return {"tasks": {"tiny_arc": shots}, "include_path": str(TASK_DIR), "limit": None, "backend": "hf",
            "model_args": {}, "batch_size": 4, "num_gpus": 0, "dtype": "float32", "bootstrap_iters": 0}


def items() -> list[dict]:
    return [json.loads(line) for line in (TASK_DIR / "tiny_arc_test.jsonl").read_text().splitlines()]


@functools.cache
def load(model_dir: str) -> tuple:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hand_loglikelihoods(model_dir: str, context: str, choices: list[str]) -> list[float]:
    """log p(" choice" | BOS + context) for each choice, the continuation's tokens being those of context + choice
    after the context's (how a harness splits a pair whose boundary may merge into one token)."""
    import torch

    tok, model = load(model_dir)
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    out = []
    for choice in choices:
        whole = tok(context + " " + choice, add_special_tokens=False)["input_ids"]
        cont, prefix = whole[len(ctx):], [tok.bos_token_id] + ctx
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prefix + cont])).logits[0], -1)
        out.append(sum(logp[len(prefix) - 1 + i, t].item() for i, t in enumerate(cont)))
    return out


def test_zero_shot_scores_match_the_hand_computed_ones(tiny_assets):
    model_dir = str(tiny_assets.policy)
    res = evaluate(spec(0), model_dir, log_samples=True)
    assert res["n-shot"] == {"tiny_arc": 0} and res["n-samples"]["tiny_arc"]["effective"] == len(items())
    samples = {s["doc_id"]: s for s in res["samples"]["tiny_arc"]}
    acc = acc_norm = 0
    for i, item in enumerate(items()):
        choices, gold = item["choices"]["text"], item["choices"]["label"].index(item["answerKey"])
        ll = hand_loglikelihoods(model_dir, f"Question: {item['question']}\nAnswer:", choices)
        if i < 3:  # lm_eval's own log-likelihoods of the first items, choice by choice
            assert [r[0][0] for r in samples[i]["resps"]] == pytest.approx(ll, abs=1e-3)
        acc += max(range(len(ll)), key=ll.__getitem__) == gold
        acc_norm += max(range(len(ll)), key=lambda j: ll[j] / len(choices[j])) == gold
    got = res["results"]["tiny_arc"]
    assert got["acc,none"] == pytest.approx(acc / len(items()))
    assert got["acc_norm,none"] == pytest.approx(acc_norm / len(items()))


def test_few_shot_prompts_carry_that_many_solved_training_examples(tiny_assets):
    res = evaluate(spec(2), str(tiny_assets.policy), log_samples=True)
    assert res["n-shot"] == {"tiny_arc": 2}
    train = [json.loads(line) for line in (TASK_DIR / "tiny_arc_train.jsonl").read_text().splitlines()]
    solved = {f"Question: {t['question']}\nAnswer: {t['choices']['text'][t['choices']['label'].index(t['answerKey'])]}"
              for t in train}
    for sample in res["samples"]["tiny_arc"]:
        context = sample["arguments"][0][0]
        *shots, asked = context.split("\n\n")
        assert len(shots) == 2 and set(shots) <= solved, context
        assert asked == f"Question: {sample['doc']['question']}\nAnswer:"

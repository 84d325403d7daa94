"""ReMax's pure pieces (``core.remax``), its config section, and the example reward functions."""

import pytest
import torch

from prefloop.core.config import RecipeError, parse_recipe
from prefloop.core.remax import pack_sequences, remax_total_steps, step_prompts, step_summary, worker_share
from prefloop.core.rewards import WORD_BUDGET, brevity, verbosity


def recipe(train):
    return {"name": "t", "run_dir": "/tmp/r", "policy": {"model": "m"}, "data": {"train": "p.jsonl"},
            "scorer": {"kind": "function", "function": "a:b"}, "train": train}


def test_remax_total_steps():
    assert remax_total_steps(64, 1, 8) == 8
    assert remax_total_steps(65, 2, 8) == 18  # a short last step per epoch still counts
    assert remax_total_steps(64, 3, 8, max_steps=5) == 5
    with pytest.raises(ValueError):
        remax_total_steps(0, 1, 8)


def test_step_prompts_cover_every_prompt_each_epoch_and_are_reproducible():
    n, per = 10, 4
    epoch0 = [step_prompts(n, s, per, seed=3) for s in range(3)]
    assert all(len(idx) == per for idx in epoch0)
    assert set(i for idx in epoch0 for i in idx) == set(range(n))
    # the short last step is filled from the start of the same epoch's order
    assert epoch0[2][2:] == epoch0[0][:2]
    assert epoch0 == [step_prompts(n, s, per, seed=3) for s in range(3)]  # a restarted worker takes the same
    epoch1 = [step_prompts(n, s, per, seed=3) for s in range(3, 6)]
    assert epoch1 != epoch0 and set(i for idx in epoch1 for i in idx) == set(range(n))


def test_worker_share_splits_without_overlap():
    items = list(range(8))
    shares = [worker_share(items, r, 3) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5]]


def test_pack_sequences_masks_and_truncation():
    enc = pack_sequences([[1, 2, 3], [4]], [[7, 8], [9, 10, 11]], max_prompt_len=2, max_response_len=2, pad_id=0)
    # prompt keeps its END, response its START; right padding
    assert enc["input_ids"].tolist() == [[2, 3, 7, 8], [4, 9, 10, 0]]
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert enc["loss_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 0]]
    assert enc["input_ids"].dtype == torch.long
    with pytest.raises(ValueError, match="2 prompts but 1"):
        pack_sequences([[1], [2]], [[3]], 4, 4, 0)
    with pytest.raises(ValueError, match="row 0: empty prompt"):
        pack_sequences([[]], [[3]], 4, 4, 0)


def test_step_summary_sums_and_counts():
    s = step_summary([1.0, 0.0], [0.5, 0.5], [0.5, -0.5], [0.1, 0.3], [4, 6])
    assert s["reward_sample"] == [1.0, 2.0] and s["reward_greedy"] == [1.0, 2.0]
    assert s["advantage"] == [0.0, 2.0] and s["kl"] == pytest.approx([0.4, 2.0])
    assert s["response_len"] == [10.0, 2.0] and s["sample_beats_greedy"] == [1.0, 2.0]


def test_remax_config_defaults_follow_the_card():
    cfg = parse_recipe(recipe({"method": "remax"}), "r.yaml").train
    rx = cfg.remax
    assert (rx.temperature, rx.top_p, rx.kl_ctl, rx.kl_penalty, rx.reward_clip) == (0.7, 0.9, 0.1, "full_step", 1.0)
    assert (cfg.max_prompt_len, cfg.max_response_len, cfg.lr, cfg.epochs) == (384, 384, 5e-7, 1)


@pytest.mark.parametrize("train, message", [
    ({"method": "remax", "remax": {"bogus": 1}}, "train.remax.bogus"),
    ({"method": "remax", "remax": {"kl_penalty": "full"}}, "train.remax.kl_penalty"),
    ({"method": "remax", "remax": {"reward_clip": 0}}, "train.remax.reward_clip"),
    ({"method": "remax", "lora": {"r": 4}}, "set lora to null"),
    ({"method": "remax", "data": "prefs.jsonl"}, "train.data must be null"),
])
def test_remax_config_errors_name_the_key(train, message):
    with pytest.raises(RecipeError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_recipe(recipe(train), "r.yaml")


def test_example_rewards():
    assert brevity("p", "") == 1.0 and brevity("p", "w " * WORD_BUDGET) == 0.0
    assert brevity("p", "a b c") > brevity("p", "a b c d e f")
    assert verbosity("p", "") == 0.0 and verbosity("p", "w " * (2 * WORD_BUDGET)) == 1.0

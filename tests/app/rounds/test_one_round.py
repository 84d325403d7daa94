"""``prefloop rollout|train --round R`` build round R as the loop does and run the round's method.

The stages themselves run on Ray in tests/ray (test_one_round_commands, test_remax); here their drivers are
replaced by recorders, to isolate the one thing this module decides: which driver round R's method takes."""

from __future__ import annotations

import pytest

from prefloop.app.rounds import loop, one_round
from prefloop.core.config import RecipeError, parse_recipe

BASE = {"name": "t", "policy": {"model": "/models/base"}, "data": {"train": "/data/p.jsonl"},
        "scorer": {"kind": "function", "function": "prefloop.core.rewards:brevity"}}


@pytest.fixture
def drivers(monkeypatch):
    """Which stage driver ran, with the Round it was given; no Ray, no generators."""
    calls = []

    class Pool:
        def shutdown(self):
            calls.append(("pool shutdown", None))

    monkeypatch.setattr(loop, "run_train", lambda rnd, **kw: calls.append(("train", rnd)) or "model")
    monkeypatch.setattr(loop, "run_remax", lambda rnd, **kw: calls.append(("remax", rnd)) or "model")
    monkeypatch.setattr(one_round, "init_ray", lambda resources: None)
    monkeypatch.setattr(one_round, "start_pool", lambda recipe, model: calls.append(("pool", model)) or Pool())
    import prefloop.app.rounds.train as train_stage

    monkeypatch.setattr(train_stage, "run_train", lambda rnd, **kw: calls.append(("train", rnd)) or "model")
    return calls


def test_train_round_of_a_remax_recipe_runs_remax_through_a_pool(drivers, tmp_path):
    recipe = parse_recipe({**BASE, "run_dir": str(tmp_path), "train": {"method": "remax"}}, "t.yaml")
    one_round.train_one(recipe, 0)
    kinds = [k for k, _ in drivers]
    assert kinds == ["pool", "remax", "pool shutdown"]  # not DPO training, as `prefloop train` did before
    assert drivers[0][1] == "/models/base" and drivers[1][1].pool is not None


def test_train_round_of_an_offline_method_runs_ray_train(drivers, tmp_path):
    recipe = parse_recipe({**BASE, "run_dir": str(tmp_path), "data": {"train": "/data/p-{round}.jsonl"},
                           "train": {"method": "kto"}}, "t.yaml")
    one_round.train_one(recipe, 0)
    assert [k for k, _ in drivers] == ["train"] and drivers[0][1].method.name == "kto"


def test_one_round_commands_make_the_loops_checks(tmp_path):
    same_prompts = parse_recipe({**BASE, "run_dir": str(tmp_path), "train": {"method": "dpo"}}, "t.yaml")
    with pytest.raises(RecipeError, match="every online round would read the same prompts"):
        one_round.rollout_one(same_prompts, 0)
    remax = parse_recipe({**BASE, "run_dir": str(tmp_path), "train": {"method": "remax"}}, "t.yaml")
    with pytest.raises(RecipeError, match="use `prefloop train --round R`"):
        one_round.rollout_one(remax, 0)
    with pytest.raises(RecipeError, match="rounds 0..2"):
        one_round.train_one(remax, 3)
    no_train = parse_recipe({**BASE, "run_dir": str(tmp_path), "data": {"train": "/d/p-{round}.jsonl"}}, "t.yaml")
    with pytest.raises(RecipeError, match="a round needs a train section"):  # `prefloop train` trained DPO
        one_round.train_one(no_train, 0)

"""``Round``: what round R of a recipe is (app/rounds/round.py), built without Ray: its own recipe under
``loop.methods``, its start model, and its one reference model (``Round.models.reference``)."""

from __future__ import annotations

import pytest

from prefloop.app.rounds.round import Round
from prefloop.app.storage.rundir import MODEL, RunDir, write_manifest
from prefloop.core.config import parse_recipe

BASE = {"name": "t", "policy": {"model": "/models/base"}, "data": {"train": "/data/p-{round}.jsonl"},
        "scorer": {"kind": "function", "function": "prefloop.core.rewards:brevity"}}


def recipe(tmp_path, **train):
    return parse_recipe({**BASE, "run_dir": str(tmp_path / "run"), "train": train}, "t.yaml")


def commit_model(run: RunDir, r: int) -> str:
    with run.commit(r, MODEL) as out:
        write_manifest(out, {"stage": MODEL, "round": r})
    return str(run.stage_dir(r, MODEL))


def test_round_0_starts_from_the_base_and_is_its_own_reference(tmp_path):
    rnd = Round.of(recipe(tmp_path, method="dpo"), 0)
    assert (rnd.models.start, rnd.models.reference) == ("/models/base", "/models/base")


@pytest.mark.parametrize("reference", ["previous", "base"])
def test_round_1_starts_from_round_0_and_its_reference_follows_train_reference(tmp_path, reference):
    rec = recipe(tmp_path, method="kto", reference=reference)
    model0 = commit_model(RunDir(rec.run_dir), 0)
    rnd = Round.of(rec, 1)
    assert rnd.models.start == model0
    assert rnd.models.reference == (model0 if reference == "previous" else "/models/base")


@pytest.mark.parametrize("method", ["sft", "csft"])
def test_a_method_without_a_reference_has_none(tmp_path, method):
    rec = recipe(tmp_path, method=method)
    commit_model(RunDir(rec.run_dir), 0)
    assert Round.of(rec, 0).models.reference is None and Round.of(rec, 1).models.reference is None


def test_per_round_methods_decide_the_rounds_reference(tmp_path):
    rec = parse_recipe({**BASE, "run_dir": str(tmp_path / "run"), "train": {"method": "sft"},
                        "loop": {"rounds": 2, "methods": ["sft", "kto"]}}, "t.yaml")
    model0 = commit_model(RunDir(rec.run_dir), 0)
    first, second = Round.of(rec, 0), Round.of(rec, 1)
    assert (first.method.name, first.models.reference) == ("sft", None)
    assert (second.method.name, second.recipe.train.method, second.models.reference) == ("kto", "kto", model0)


def test_a_round_whose_previous_model_is_not_committed_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="round 1 starts from round 0's model, which is not committed"):
        Round.of(recipe(tmp_path, method="dpo"), 1)

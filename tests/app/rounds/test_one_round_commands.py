"""``prefloop rollout/train --round R`` run round R exactly as ``prefloop run`` does: the same start model (round
R-1's committed model, not the base) and the same method (``loop.methods[R]``). Both paths ask
``Round.build`` (``app/rounds/round.py``). Here the commands' function (``cmd_one_round``, what
``prefloop rollout|train`` runs after parsing) runs in this process on the session's Ray, and their manifests
are read."""

import argparse
import json
import shutil
from pathlib import Path

import pytest

from prefloop.app.front.cli import cmd_one_round
from prefloop.app.front.recipes import resolve_recipe
from prefloop.app.rounds.round import Round
from prefloop.app.storage.rundir import RunDir
from tests.paths import RECIPES

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def fake_round_0(run_dir: Path, policy: Path) -> Path:
    """A committed round-0 model stage (the tiny policy's weights under a new path)."""
    model = run_dir / "round_0" / "model"
    shutil.copytree(policy, model)
    (model / "manifest.json").write_text(json.dumps({"stage": "model", "round": 0, "method": "sft"}))
    return model


def one_round(command: str, recipe: str, run_dir: Path, round_idx: int = 1) -> None:
    """``prefloop COMMAND RECIPE --tiny --round R --set run_dir=...``."""
    args = argparse.Namespace(command=command, recipe=str(RECIPES / recipe), set=[f"run_dir={run_dir}"], tiny=True,
                              round=round_idx, allow_recipe_change=False)
    assert cmd_one_round(args) == 0


def test_train_round_1_uses_the_round_method_and_start_model(tmp_path, tiny_assets, ray_cluster, monkeypatch):
    monkeypatch.setenv("PREFLOOP_ASSETS", str(tiny_assets.root))
    run_dir = tmp_path / "run"
    model0 = fake_round_0(run_dir, tiny_assets.policy)
    recipe = resolve_recipe(str(RECIPES / "archangel-sft-kto.yaml"), [f"run_dir={run_dir}"], tiny=True)
    loop_round = Round.build(recipe, RunDir(run_dir), 1)  # what `prefloop run` would use
    loop_view = loop_round.models
    assert recipe.train.method == "sft" and loop_round.recipe.train.method == "kto"
    one_round("train", "archangel-sft-kto.yaml", run_dir)
    manifest = json.loads((run_dir / "round_1" / "model" / "manifest.json").read_text())
    assert manifest["method"] == "kto", "train --round 1 ignored loop.methods"
    assert Path(manifest["start_model"]) == model0 == Path(loop_view.start)
    assert Path(manifest["reference"]) == Path(loop_view.reference)


def test_rollout_round_1_samples_from_round_0s_model(tmp_path, tiny_assets, ray_cluster, monkeypatch):
    monkeypatch.setenv("PREFLOOP_ASSETS", str(tiny_assets.root))
    run_dir = tmp_path / "run"
    model0 = fake_round_0(run_dir, tiny_assets.policy)
    one_round("rollout", "snorkel-pairrm-dpo.yaml", run_dir)
    manifest = json.loads((run_dir / "round_1" / "rollout" / "manifest.json").read_text())
    assert Path(manifest["policy"]) == model0, "rollout --round 1 sampled from the base model"

"""The per-round leaderboard step (app/rounds/leaderboard.py) on the shared local Ray: one Ray task runs the real
lm_eval on a shipped model folder (the tiny policy, the local ARC-style task of the Archangel recipe's --tiny),
the results commit as ``round_R/leaderboard``, a second call reads them back without running again, and a task
that outlives ``timeout_s`` is a TimeoutError with nothing committed."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from prefloop.app.front.recipes import resolve_recipe
from prefloop.app.rounds import leaderboard
from prefloop.app.storage.rundir import LEADERBOARD, RunDir
from tests.paths import RECIPES

pytestmark = pytest.mark.ray


def tiny_round(tmp_path, tiny_assets, monkeypatch, *sets: str) -> SimpleNamespace:
    monkeypatch.setenv("PREFLOOP_ASSETS", str(tiny_assets.root))
    recipe = resolve_recipe(str(RECIPES / "archangel-sft-kto.yaml"), [f"run_dir={tmp_path / 'run'}", *sets],
                            tiny=True)
    return SimpleNamespace(recipe=recipe, run=RunDir(recipe.run_dir), index=0)


def test_the_step_scores_the_model_in_a_ray_task_commits_and_reads_back(tmp_path, tiny_assets, monkeypatch,
                                                                        ray_cluster):
    rnd = tiny_round(tmp_path, tiny_assets, monkeypatch, "eval.leaderboard.limit=4")
    figs = leaderboard.round_figures(rnd, str(tiny_assets.policy))
    assert set(figs) == {"leaderboard", "leaderboard_average", "leaderboard_s"}
    arc = figs["leaderboard"]["tiny_arc"]
    assert arc["metric"] == "acc_norm,none" and arc["num_fewshot"] == 2 and arc["items"] == 4 and arc["limit"] == 4
    assert arc["score"] in {0.0, 25.0, 50.0, 75.0, 100.0}  # 4 items scored
    assert figs["leaderboard_average"] == arc["score"]
    stage = rnd.run.stage_dir(0, LEADERBOARD)
    results = json.loads((stage / "results.json").read_text())
    assert 100 * results["results"]["tiny_arc"]["acc_norm,none"] == pytest.approx(arc["score"])
    assert results["n-shot"] == {"tiny_arc": 2} and results["lm_eval_version"]

    def must_not_run(*_):
        raise AssertionError("a committed leaderboard stage was scored again")

    monkeypatch.setattr(leaderboard, "run_on_cluster", must_not_run)
    assert leaderboard.round_figures(rnd, str(tiny_assets.policy)) == figs


def test_a_step_past_its_timeout_fails_and_commits_nothing(tmp_path, tiny_assets, monkeypatch, ray_cluster):
    rnd = tiny_round(tmp_path, tiny_assets, monkeypatch, "eval.leaderboard.timeout_s=1")
    with pytest.raises(TimeoutError, match="leaderboard .lm_eval tiny_arc."):
        leaderboard.round_figures(rnd, str(tiny_assets.policy))
    assert not rnd.run.is_committed(0, LEADERBOARD)


def test_without_the_section_the_step_adds_nothing(tmp_path, tiny_assets, monkeypatch):
    rnd = tiny_round(tmp_path, tiny_assets, monkeypatch, "eval.leaderboard=null")
    assert leaderboard.round_figures(rnd, str(tiny_assets.policy)) == {}

"""The round loop end to end on real components, through the shipped recipes' ``--tiny`` switch.

- Snorkel (online DPO): three rounds, each on its own partition of the prepared tiny Snorkel copy (disjoint
  prompts), with the vLLM generators kept across rounds and swapped, PairRM, Ray Train;
  then the same command again is a no-op.
- Contextual KTO (its online variant): a driver killed mid-round resumes without redoing committed work, in
  tests/app/front/test_killed_driver.py.
- Archangel (offline SFT then KTO on a preference file, no rollout), with lm_eval's leaderboard step per round.
"""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from prefloop.app.front.recipes import resolve_recipe
from prefloop.app.rounds.loop import run_loop
from tests.paths import RECIPES

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def tiny_env(tiny_assets, monkeypatch):
    monkeypatch.setenv("PREFLOOP_ASSETS", str(tiny_assets.root))
    return dict(os.environ, PREFLOOP_ASSETS=str(tiny_assets.root), PYTHONUNBUFFERED="1")


def stage_mtimes(run_dir: Path, stage: str, rounds: int) -> list[int]:
    return [(run_dir / f"round_{r}" / stage / "manifest.json").stat().st_mtime_ns for r in range(rounds)]


# The gold judge (the tiny world's finer gold preference, tinyworld/gold.py), which the loop never optimised, must
# prefer the final round's answers to the base's more often than not: ties alone (0.5) do not pass. Measured with
# the tiny recipe as it ships (2 steps a round) on all 64 held-out prompts: rounds 0/1/2 won 0.578/0.570/0.555 by
# gold (stderr ~0.05), 0.59/0.60/0.70 by the training PairRM. With 4 epochs (8 steps a round) the training PairRM
# rose to 0.86 while gold fell to 0.20 (answers of repeated words): this tiny recipe over-optimises its proxy
# judge, so the test trains as the recipe ships. The 0.1 learning bar by gold is the demo's (its recipe learns:
# tests/cluster/test_job_submit.py).
EVAL_PROMPTS = 64  # the whole shipped held-out set (tinyworld/data/heldout.jsonl)


def test_snorkel_tiny_rounds_swap_in_place_and_resume_is_a_no_op(tmp_path, tiny_env, ray_cluster,
                                                                 graded_by_gold):
    # every held-out prompt (64) is judged, so the gold check below does not hang on one prompt's verdict
    recipe = resolve_recipe(str(RECIPES / "snorkel-pairrm-dpo.yaml"),
                            [f"run_dir={tmp_path / 'run'}", f"loop.eval_limit={EVAL_PROMPTS}"], tiny=True)
    rows = run_loop(recipe)
    run_dir = tmp_path / "run"
    assert [m["round"] for m in rows] == [0, 1, 2]
    seen = []  # each round rolled out its own partition (the card's iteration), never another round's prompts
    for r in range(3):
        manifest = json.loads((run_dir / f"round_{r}" / "rollout" / "manifest.json").read_text())
        assert manifest["partition"]["path"].endswith(f"snorkel_tiny_prepared/prompts-{r}.parquet")
        ids = set(pq.read_table(run_dir / f"round_{r}" / "rollout" / "candidates.parquet")["prompt_id"].to_pylist())
        assert len(ids) == manifest["counts"]["used"] == 32
        seen.append(ids)
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    for m in rows:
        assert m["n"] == EVAL_PROMPTS and m["pairs"] > 0 and m["method"] == "dpo"
        graded_by_gold(run_dir, m)
        assert 0.0 < m["swap_s"] < 60.0  # the weights were swapped into the running engines
        best = pq_rows(run_dir / f"round_{m['round']}" / "eval" / "best_of.parquet")
        assert m["best_of_n"] == 4 and len(best) == EVAL_PROMPTS
        for b in best:  # the kept sample is PairRM's top one of 4
            assert len(b["rerank_scores"]) == 4 and b["best_index"] == b["rerank_scores"].index(max(b["rerank_scores"]))
    print("eval manifests:", json.dumps(rows, default=str))
    final = rows[-1]
    assert final["wins"] > final["losses"] and final["win_rate"] > 0.5, \
        f"the gold judge does not prefer the final round to the base: {final}"
    alpaca = json.loads((run_dir / "round_1" / "eval" / "alpaca_eval.json").read_text())
    assert len(alpaca) == EVAL_PROMPTS and {"instruction", "output", "generator"} <= set(alpaca[0])
    report = (run_dir / "report.md").read_text()
    assert "| 1 |" in report or "| 1 (!) |" in report
    assert "eval judge (`function`)" in report and "Warning" not in report
    assert (run_dir / "report.png").stat().st_size > 1000
    assert (run_dir / "round_1" / "model" / "config.json").is_file()
    before = stage_mtimes(run_dir, "model", 3)
    assert [m["round"] for m in run_loop(recipe)] == [0, 1, 2]
    assert stage_mtimes(run_dir, "model", 3) == before


def pq_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_archangel_tiny_offline_sft_then_kto(tmp_path, tiny_env, ray_cluster, graded_by_gold):
    recipe = resolve_recipe(str(RECIPES / "archangel-sft-kto.yaml"), [f"run_dir={tmp_path / 'run'}"], tiny=True)
    rows = run_loop(recipe)
    assert [(m["round"], m["method"]) for m in rows] == [(0, "sft"), (1, "kto")]
    assert all(m["pairs"] > 0 for m in rows)
    assert not (tmp_path / "run" / "round_0" / "rollout").exists(), "offline rounds run no rollout"
    info = json.loads((tmp_path / "run" / "round_1" / "model" / "prefloop_model.json").read_text())
    assert info == {"chat_template": "tokenizer", "method": "kto", "control_token": None}
    for m in rows:  # the eval manifest's keys, graded by the tiny world's preference
        graded_by_gold(tmp_path / "run", m)
    for m in rows:  # eval.leaderboard (--tiny: the local ARC-style task): lm_eval's score in every round's manifest
        arc = m["leaderboard"]["tiny_arc"]
        assert arc["num_fewshot"] == 2 and arc["items"] == 10 and 0 <= arc["score"] <= 100
        assert (tmp_path / "run" / f"round_{m['round']}" / "leaderboard" / "results.json").is_file()
    assert "## Open LLM Leaderboard tasks" in (tmp_path / "run" / "report.md").read_text()

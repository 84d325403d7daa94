"""The round loop end to end on real components, and resume after the driver is killed mid-round.

Two rounds of online DPO on the tiny assets (vLLM generators kept across rounds and hot-swapped, PairRM,
Ray Train), then the same command again: nothing is redone. A second run is killed (SIGKILL) right after its
first rollout commits, then restarted: it finishes without redoing that rollout or training a round twice.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from prefloop.app.loop import run_loop
from prefloop.core.config import parse_recipe

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROUNDS = 2


def raw_recipe(tmp_path, assets, name):
    from prefloop.app.cli import DATA_DIR

    return {
        "name": name, "run_dir": str(tmp_path / name), "seed": 0,
        "policy": {"model": str(assets.policy)},
        "data": {"train": str(DATA_DIR / "prompts.jsonl"), "eval": str(DATA_DIR / "heldout.jsonl"),
                 "max_prompt_tokens": 96, "limit": 24},
        "rollout": {"num_samples": 4, "max_tokens": 32, "max_model_len": 160, "batch_size": 12},
        "scorer": {"kind": "pairrm", "model": str(assets.pairrm), "batch_size": 12},
        "train": {"method": "dpo", "lr": 1e-3, "epochs": 1, "micro_batch_size": 6, "max_prompt_len": 96,
                  "max_response_len": 32, "num_workers": 2},
        "loop": {"rounds": ROUNDS, "eval_limit": 12},
    }


def mtimes(run_dir, stage):
    return {r: (run_dir / f"round_{r}" / stage / "manifest.json").stat().st_mtime_ns for r in range(ROUNDS)}


def test_rounds_commit_swap_in_place_and_resume_is_a_no_op(tmp_path, tiny_assets, ray_cluster):
    recipe = parse_recipe(raw_recipe(tmp_path, tiny_assets, "loop"), "test")
    rows = run_loop(recipe)
    run_dir = tmp_path / "loop"
    assert [m["round"] for m in rows] == list(range(ROUNDS))
    for m in rows:
        assert 0.0 <= m["win_rate"] <= 1.0 and m["n"] == 12 and m["pairs"] > 0
        assert 0.0 < m["swap_s"] < 10.0, "weights are swapped into the running engines, not rebuilt"
    alpaca = json.loads((run_dir / "round_1" / "eval" / "alpaca_eval.json").read_text())
    assert len(alpaca) == 12 and {"instruction", "output", "generator"} <= set(alpaca[0])
    report = (run_dir / "report.md").read_text()
    assert "| 1 |" in report and (run_dir / "report.png").stat().st_size > 1000
    assert (run_dir / "round_1" / "model" / "config.json").is_file()
    before = mtimes(run_dir, "model")
    assert [m["round"] for m in run_loop(recipe)] == list(range(ROUNDS))
    assert mtimes(run_dir, "model") == before


def test_driver_killed_mid_round_resumes(tmp_path, tiny_assets):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(raw_recipe(tmp_path, tiny_assets, "killed")))
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "prefloop.app.cli", "run", str(recipe_path)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 420
    rollout0 = run_dir / "round_0" / "rollout" / "manifest.json"
    while not rollout0.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert rollout0.exists(), "the first run never committed its first rollout"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-round (before training)
    proc.wait(timeout=60)
    first = rollout0.stat().st_mtime_ns
    assert not (run_dir / "round_0" / "eval").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert rollout0.stat().st_mtime_ns == first, "the committed rollout was redone"
    for r in range(ROUNDS):
        assert (run_dir / f"round_{r}" / "eval" / "manifest.json").is_file()
    steps = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [(s.get("round"), s.get("step")) for s in steps if "step" in s]
    assert len(trained) == len(set(trained)), "a round was trained twice"

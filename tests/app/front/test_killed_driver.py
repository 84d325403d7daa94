"""A real run whose driver is killed mid-round (SIGKILL of its whole process group: no goodbye, no final
heartbeat): ``prefloop status`` tells, and the same command again resumes without redoing committed work.

The real CLI runs the Contextual KTO recipe's online variant (``--tiny``, one round) without a TTY, as under
``ray job submit``:
- its console must be plain lines and quiet: no Ray / vLLM INFO lines, the libraries' logs in
  RUN_DIR/logs/driver.log;
- while it trains round 0, ``prefloop status`` reports it running in that stage;
- after the SIGKILL, ``prefloop status`` reports the heartbeat stale (the driver died), names the stages round 0
  committed, and exits 1;
- the driver is killed once round 0's training wrote its first checkpoint; the same command again finishes the
  round without redoing the committed rollout, RESUMES training from that checkpoint (``restored_from`` in the
  model manifest) and trains no step twice.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.paths import RECIPES

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RECIPE = RECIPES / "contextual-kto-pairrm.yaml"


def status(run_dir: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefloop.app.front.cli", "status", str(run_dir)], env=env,
                          capture_output=True, text=True, timeout=120)


def checkpoints(run_dir: Path) -> list[Path]:
    """Round 0's Ray Train checkpoints (``round_0/train/ray_train/checkpoint_*``, app/rounds/train.py)."""
    return sorted((run_dir / "round_0" / "train").glob("**/checkpoint_*"))


def watch_until_training(proc: subprocess.Popen, run_dir: Path) -> list:
    """The (round, stage) pairs the heartbeat showed, until round 0 trains and wrote a checkpoint (or the driver
    exits, or 10 min)."""
    heartbeat, seen, deadline = run_dir / "heartbeat.json", [], time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            hb = json.loads(heartbeat.read_text()) if heartbeat.is_file() else {}
        except ValueError:  # caught mid-write
            hb = {}
        if (hb.get("round"), hb.get("stage")) not in seen:
            seen.append((hb.get("round"), hb.get("stage")))
        if hb.get("round") == 0 and hb.get("stage") == "train" and checkpoints(run_dir):
            time.sleep(1.0)  # the checkpoint's files are written before its folder is reported
            break
        time.sleep(0.5)
    return seen


def test_killed_driver_status_then_resume_without_redoing_committed_work(tmp_path, tiny_assets, graded_by_gold):
    env = dict(os.environ, PREFLOOP_ASSETS=str(tiny_assets.root), PYTHONUNBUFFERED="1")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "prefloop.app.front.cli", "run", str(RECIPE), "--tiny", "--set", f"run_dir={run_dir}",
           "--set", "loop.rounds=1", "--set", "train.data=null",  # the online variant: a rollout, then training
           "--set", "train.checkpoint_every_steps=1",  # a checkpoint after the first step: the kill comes after it
           "--set", "train.epochs=4"]  # steps enough that the watcher sees a checkpoint and status sees training
    with open(tmp_path / "console.txt", "w") as console:
        proc = subprocess.Popen(cmd, env=env, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            seen = watch_until_training(proc, run_dir)
            assert (0, "train") in seen and checkpoints(run_dir), f"no round 0 checkpoint; stages seen: {seen}"
            assert (0, "rollout") in seen and (None, "base_answers") in seen
            alive = status(run_dir, env)
            assert alive.returncode == 0, alive.stdout + alive.stderr
            assert "driver:     running" in alive.stdout and "now:        round 0 train" in alive.stdout
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-round
            proc.wait(timeout=60)
    dead = status(run_dir, env)
    assert dead.returncode == 1, dead.stdout + dead.stderr
    out = dead.stdout
    assert "STALE" in out and "the driver died" in out and "Last seen in round 0 train" in out
    assert "committed:  0 of 1 rounds" in out and "round 0: base_answers, rollout committed" in out
    assert f"driver log: {run_dir}/logs/driver.log" in out

    shown = (tmp_path / "console.txt").read_text()
    assert re.search(r"round 0 rollout: prompts: (\d+)/\1 prompts", shown) and "\r" not in shown, shown[:3000]
    # quiet: Ray's, Ray Data's and vLLM's INFO lines went to the driver log or stayed in the workers' logs
    assert "INFO" not in shown and "Triton" not in shown and len(shown.splitlines()) < 30, shown[:3000]
    driver_log = (run_dir / "logs" / "driver.log").read_text()
    assert "ray" in driver_log.lower() and " INFO " in driver_log

    rollout0 = run_dir / "round_0" / "rollout" / "manifest.json"
    committed_at = rollout0.stat().st_mtime_ns
    assert not (run_dir / "round_0" / "model").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert rollout0.stat().st_mtime_ns == committed_at, "the committed rollout was redone"
    evaluated = json.loads((run_dir / "round_0" / "eval" / "manifest.json").read_text())
    assert evaluated["method"] == "kto"
    graded_by_gold(run_dir, evaluated)  # the eval manifest's keys, graded by the tiny world's preference
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [(s["round"], s["step"]) for s in steps if "step" in s]
    assert trained and len(trained) == len(set(trained)), "a round was trained twice"
    model = json.loads((run_dir / "round_0" / "model" / "manifest.json").read_text())
    assert model["steps"]["restored_from"] and model["steps"]["restored_from"][0] >= 1, model["steps"]
    assert model["steps"]["started_over"] is None and [s for _, s in trained] == list(range(1, len(trained) + 1))

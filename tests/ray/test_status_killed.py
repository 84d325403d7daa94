"""``prefloop status`` on a real run whose driver is killed mid-round (SIGKILL: no goodbye, no final heartbeat).

The real CLI runs the demo recipe's round loop without a TTY (as under ``ray job submit``): its console must be
plain lines, quiet (no Ray / vLLM INFO lines), with the libraries' logs in RUN_DIR/logs/driver.log. While it
trains round 0, ``prefloop status`` reports it running in that stage; after the SIGKILL it reports the
heartbeat stale (the driver died), the stages round 0 committed, and exits 1.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"


def status(run_dir: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefloop.app.cli", "status", str(run_dir)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_status_of_a_run_killed_mid_round(tmp_path, tiny_assets):
    env = dict(os.environ, PREFLOOP_ASSETS=str(tiny_assets.root), PYTHONUNBUFFERED="1")
    run_dir = tmp_path / "run"
    console = open(tmp_path / "console.txt", "w")
    cmd = [sys.executable, "-m", "prefloop.app.cli", "run", str(DEMO), "--set", f"run_dir={run_dir}",
           "--set", "loop.rounds=2", "--set", "data.limit=32"]
    proc = subprocess.Popen(cmd, env=env, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
    heartbeat, seen, deadline = run_dir / "heartbeat.json", [], time.monotonic() + 600
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            hb = json.loads(heartbeat.read_text()) if heartbeat.is_file() else {}
            if (hb.get("round"), hb.get("stage")) not in seen:
                seen.append((hb.get("round"), hb.get("stage")))
            if hb.get("round") == 0 and hb.get("stage") == "train":
                break
            time.sleep(0.5)
        assert (0, "train") in seen, f"never saw round 0 train; heartbeat stages seen: {seen}"
        assert (0, "rollout") in seen and (None, "base_answers") in seen
        alive = status(run_dir, env)
        assert alive.returncode == 0, alive.stdout + alive.stderr
        assert "driver:     running" in alive.stdout and "now:        round 0 train" in alive.stdout
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-round
        proc.wait(timeout=60)
        console.close()
    dead = status(run_dir, env)
    assert dead.returncode == 1, dead.stdout + dead.stderr
    out = dead.stdout
    assert "STALE" in out and "the driver died" in out and "Last seen in round 0 train" in out
    assert "committed:  0 of 2 rounds" in out and "round 0: base_answers, rollout committed" in out
    assert f"driver log: {run_dir}/logs/driver.log" in out

    shown = (tmp_path / "console.txt").read_text()
    assert "round 0 rollout: prompts: 32/32 prompts" in shown and "\r" not in shown
    # quiet: Ray's, Ray Data's and vLLM's INFO lines went to the driver log or stayed in the workers' logs
    assert "INFO" not in shown and "Triton" not in shown and len(shown.splitlines()) < 30, shown[:3000]
    driver_log = (run_dir / "logs" / "driver.log").read_text()
    assert "ray" in driver_log.lower() and " INFO " in driver_log

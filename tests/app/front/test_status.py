"""``prefloop status``: committed rounds, the heartbeat's stage and age, stale drivers, local and URI runs."""

import json
import os
import socket
import subprocess
import sys
import time

from prefloop.app.front.cli import main
from prefloop.app.front.status import format_status, read_status
from prefloop.app.storage.heartbeat import STALE_S, Heartbeat, liveness
from tests.builders import report_run, write_stage


def beat(root, **fields):
    hb = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
          "round": 2, "stage": "rollout", "progress": "rollout: prompts", "done": 37, "total": 128,
          "unit": "prompt", "tokens_per_s": 812.4, "stage_started": time.time() - 75,
          "driver_log": str(root / "logs" / "driver.log")}
    hb.update(fields)
    (root / "heartbeat.json").write_text(json.dumps(hb))


def test_liveness_by_age_pid_and_end_state():
    now = 1000.0
    me = {"state": "running", "pid": os.getpid(), "host": "elsewhere", "time": now - 10}
    assert liveness(me, now, host="here") == ("running", 10.0)
    assert liveness(dict(me, time=now - STALE_S - 1), now, host="here")[0] == "stale"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert liveness(dict(me, pid=dead.pid, host="here"), now, host="here")[0] == "stale"  # gone at once
    assert liveness(dict(me, pid=dead.pid), now, host="here")[0] == "running"  # other host: age only
    assert liveness(dict(me, state="finished"), now)[0] == "finished"


def test_status_of_a_running_run(tmp_path, capsys):
    root = tmp_path / "run"
    report_run(root, rounds=2, planned=3)
    write_stage(root, 2, "rollout", {"stage": "rollout"})
    (root / "round_2" / "model.partial-123").mkdir()  # an unfinished stage is not committed
    (root / "report.md").write_text("x")
    beat(root)
    st = read_status(str(root))
    assert st["rounds_committed"] == [0, 1] and st["rounds_planned"] == 3 and st["driver"] == "running"
    assert st["stages"]["2"] == ["rollout"] and st["stages"]["0"] == ["base_answers", "rollout", "model", "eval"]
    text = format_status(st)
    assert "committed:  2 of 3 rounds (round 0, 1)" in text
    assert "round 2: rollout committed" in text
    assert "now:        round 2 rollout: prompts 37/128, 812 tok/s, for 75 s" in text
    assert "round 1:    41 pairs, win rate 0.600 ± 0.050 (eval judge: function), training judge 0.700" in text
    assert "length-controlled 0.550, length 21.0 (base 18.0), repetition 0.150" in text
    assert f"report:     {root}/report.md" in text
    assert main(["status", str(root)]) == 0
    assert "driver:     running" in capsys.readouterr().out


def test_status_says_stale_when_the_heartbeat_stopped(tmp_path, capsys):
    root = tmp_path / "run"
    report_run(root, rounds=1)
    beat(root, host="another-host", time=time.time() - 600, stage="train", round=1, total=None)
    assert main(["status", str(root)]) == 1
    out = capsys.readouterr().out
    assert "STALE: no heartbeat for 10 min" in out and "the driver died" in out and "round 1 train" in out


def test_status_through_a_uri_and_as_json(tmp_path, capsys):
    root = tmp_path / "run"
    report_run(root, rounds=1)
    hb = Heartbeat(root / "heartbeat.json", round=0, stage="eval")
    hb.start()
    hb.stop("finished")
    assert main(["status", f"file://{root}", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["driver"] == "finished" and st["rounds_committed"] == [0] and st["last_round"]["round"] == 0


def test_status_of_a_missing_run_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err

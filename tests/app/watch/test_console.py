"""The console: plain lines without a TTY, bars with one, library logs into the driver log, the heartbeat."""

import io
import json
import logging

import pytest

from prefloop.app.watch import console as console_mod
from prefloop.app.watch.console import Console, route_library_logs
from tests.builders import eval_manifest


@pytest.fixture
def clean_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def rows(n, tokens):
    return [{"prompt_id": str(i), "num_tokens": [tokens, tokens]} for i in range(n)]


def test_plain_console_prints_one_line_per_event_and_beats(tmp_path, clean_root):
    out = io.StringIO()
    con = Console(verbose=False, out=out, tty=False)
    con.attach(tmp_path, "demo")
    con.activity("rollout", 0)
    seen = []
    for row in con.track(rows(5, 3), 5, "rollout: prompts"):
        seen.append(row["prompt_id"])
        hb = json.loads((tmp_path / "heartbeat.json").read_text())
    con.heartbeat.write()
    hb = json.loads((tmp_path / "heartbeat.json").read_text())
    assert (hb["round"], hb["stage"], hb["done"], hb["total"], hb["unit"]) == (0, "rollout", 5, 5, "prompt")
    assert hb["state"] == "running" and hb["tokens_per_s"] > 0 and hb["driver_log"].endswith("logs/driver.log")
    con.round_done(eval_manifest(0))
    assert "| 0 | 40 |" not in out.getvalue()  # plain: the loop's one-line round event stands for the row
    con.detach()
    con.summary([eval_manifest(0)], tmp_path, 12.0)
    text = out.getvalue()
    assert seen == ["0", "1", "2", "3", "4"]
    assert "\r" not in text and "█" not in text  # no bars without a TTY
    lines = text.splitlines()
    assert any(line.endswith("run dir     " + str(tmp_path)) for line in lines)
    assert any(line.endswith(" round 0 rollout ...") for line in lines)
    done = [line for line in lines if "round 0 rollout: prompts: 5/5 prompts" in line]
    assert len(done) == 1 and "tok/s" in done[0]
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| round |") and table[2].startswith("| 0 | 40 | 0.500 ± 0.050")
    assert json.loads((tmp_path / "heartbeat.json").read_text())["state"] == "finished"


def test_tty_console_draws_a_bar_with_tokens_per_s(tmp_path, clean_root):
    out = io.StringIO()
    con = Console(verbose=False, out=out, tty=True)
    con.attach(tmp_path, "demo")
    con.activity("eval", 1)
    list(con.track(rows(4, 10), 4, "eval: answers"))
    con.detach(RuntimeError("boom"))
    text = out.getvalue()
    assert "round 1 eval: answers" in text and "4/4" in text and "tok/s" in text
    hb = json.loads((tmp_path / "heartbeat.json").read_text())
    assert hb["state"] == "failed" and hb["error"] == "RuntimeError: boom"


def test_library_logs_go_to_the_driver_log_not_the_console(tmp_path, clean_root, capsys):
    out = io.StringIO()
    con = console_mod.install(verbose=False, out=out, tty=False)
    try:
        noisy = logging.getLogger("vllm.engine.fake")
        noisy.addHandler(logging.StreamHandler(out))  # what vLLM / Ray do: their own console handler
        noisy.propagate = False
        con.attach(tmp_path, "demo")
        route_library_logs()
        noisy.info("engine config: very long INFO line")
        noisy.warning("Triton is not installed")
        logging.getLogger("prefloop.app.x").warning("a prefloop warning")
        logging.getLogger("ray.core").error("an actor died")
        logging.getLogger("prefloop.app.rounds.loop").info("round 0: 40 pairs, win rate vs base 0.5")
        logging.getLogger("prefloop.app.rounds.rollout").info("prompts: 64 read")
        con.detach()
        log_text = (tmp_path / "logs" / "driver.log").read_text()
        assert "engine config" in log_text and "Triton" in log_text and "an actor died" in log_text
        shown = out.getvalue() + capsys.readouterr().err  # the log lines the console shows go to stderr
        assert "engine config" not in shown and "Triton" not in shown
        assert "a prefloop warning" in shown and "an actor died" in shown
        assert " round 0: 40 pairs, win rate vs base 0.5\n" in shown and " INFO " not in shown  # the round event
        assert "prompts: 64 read" not in shown and "prompts: 64 read" in log_text
    finally:
        console_mod._active = Console()
        logging.getLogger("vllm.engine.fake").handlers.clear()


def test_error_prints_in_full_with_the_log_paths(tmp_path, clean_root, capsys):
    con = Console(verbose=False, out=io.StringIO(), tty=False)
    con.attach(tmp_path, "demo")
    con.ray_logs = "/tmp/ray/session_x/logs"
    try:
        raise ValueError("the real cause")
    except ValueError as err:
        con.detach(err)
        con.error(err)
    err_text = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err_text and "ValueError: the real cause" in err_text
    assert str(tmp_path / "logs" / "driver.log") in err_text and "/tmp/ray/session_x/logs" in err_text


def test_default_console_is_verbose_and_tracks_like_a_plain_iterator(tmp_path):
    con = console_mod.get()
    assert con.verbose and con.log_to_driver
    assert [r["prompt_id"] for r in console_mod.track(rows(3, 1), 3, "x")] == ["0", "1", "2"]


NATIVE_SCRIPT = r'''
import logging, os, sys
from pathlib import Path
from prefloop.app.watch.console import Console
from prefloop.app.watch.console_streams import route_raylet_notices
import ray._private.worker as ray_worker

run = Path(sys.argv[1])
con = Console(verbose=False, tty=False)
con.install_logging()
con.attach(run, "demo")
os.write(2, b"[E core_worker.cc:2465] a native error line\n")  # what Ray's C++ core worker does
route_raylet_notices()
ray_worker.print_to_stdstream({"lines": ["WARNING: 8 PYTHON worker processes have been started"],
                               "pid": "raylet", "is_err": False}, False)
logging.getLogger("prefloop.app.rounds.loop").warning("a prefloop warning")
con.detach()
os.write(2, b"native after the run\n")
'''


def test_native_stderr_and_raylet_notices_go_to_the_driver_log(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", NATIVE_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "logs" / "driver.log").read_text()
    assert "a native error line" in log and "8 PYTHON worker processes" in log
    assert "a native error line" not in done.stderr and "8 PYTHON" not in done.stdout + done.stderr
    assert "a prefloop warning" in done.stderr  # prefloop's own warnings still reach the person
    assert "native after the run" in done.stderr  # descriptor 2 is given back when the run ends

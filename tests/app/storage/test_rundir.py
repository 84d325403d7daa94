"""The run directory (app/storage/rundir.py) on a local folder: a stage is committed whole or not at all, a
crashed attempt's scratch is cleaned (only a dead process's), old manifests read with today's keys, and
``metrics.jsonl`` is rebuilt whole from the committed models."""

import json
import os
import subprocess
import sys

import pytest

from prefloop.app.storage.rundir import (
    EVAL,
    METRICS_FILE,
    MODEL,
    ROLLOUT,
    RunDir,
    remove_dead_partials,
    upgrade_manifest,
    write_manifest,
)
from tests.builders import dead_pid


def test_a_stage_is_committed_whole(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.stage_dir(2, ROLLOUT) == tmp_path / "run" / "round_2" / "rollout"
    with run.commit(2, ROLLOUT) as out:
        assert out.name == f"rollout.partial-{os.getpid()}" and not run.is_committed(2, ROLLOUT)
        (out / "pairs.parquet").write_text("p")
        write_manifest(out, {"stage": ROLLOUT, "round": 2})
    assert run.is_committed(2, ROLLOUT) and (run.stage_dir(2, ROLLOUT) / "pairs.parquet").read_text() == "p"
    assert sorted(p.name for p in run.round_dir(2).iterdir()) == ["rollout"]
    with pytest.raises(FileExistsError, match="stage already committed"):
        with run.commit(2, ROLLOUT):
            pass


def test_a_failed_stage_leaves_nothing(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(ZeroDivisionError):
        with run.commit(0, MODEL) as out:
            write_manifest(out, {"stage": MODEL})
            1 / 0
    with pytest.raises(RuntimeError, match="stage model wrote no manifest.json"):
        with run.commit(0, MODEL) as out:
            (out / "config.json").write_text("{}")
    assert not run.is_committed(0, MODEL) and list(run.round_dir(0).iterdir()) == []


def test_only_dead_processes_partials_are_removed(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (live.pid, dead_pid(), os.getpid()):
            (tmp_path / f"rollout.partial-{pid}").mkdir()
        remove_dead_partials(tmp_path, "rollout")
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"rollout.partial-{live.pid}"]
    finally:
        live.kill()
        live.wait()


def test_a_commit_cleans_an_earlier_crashed_attempt(tmp_path):
    run = RunDir(tmp_path / "run")
    stale = run.round_dir(0) / f"eval.partial-{dead_pid()}"
    stale.mkdir(parents=True)
    with run.commit(0, EVAL) as out:
        write_manifest(out, {"stage": EVAL})
    assert sorted(p.name for p in run.round_dir(0).iterdir()) == ["eval"]


def test_old_manifest_keys_are_read_under_their_new_names(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.commit(0, EVAL) as out:
        write_manifest(out, {"stage": EVAL, "judge_win_rate": 0.6, "judge_win_rate_stderr": 0.05, "win_rate": 0.7})
    assert run.manifest(0, EVAL) == {"stage": EVAL, "scorer_win_rate": 0.6, "scorer_win_rate_stderr": 0.05,
                                     "win_rate": 0.7}
    assert json.loads((run.stage_dir(0, EVAL) / "manifest.json").read_text())["judge_win_rate"] == 0.6  # as written
    both = {"judge_win_rate": 0.1, "scorer_win_rate": 0.6}  # a new key already there wins over the old one
    assert upgrade_manifest(both) == both


def test_metrics_are_rebuilt_whole_from_the_committed_models(tmp_path):
    run = RunDir(tmp_path / "run")
    for r, name in ((0, "train_metrics.jsonl"), (1, "remax_metrics.jsonl")):
        with run.commit(r, MODEL) as out:
            (out / name).write_text(json.dumps({"step": 1, "loss": 0.5 - r}) + "\n")
            write_manifest(out, {"stage": MODEL})
    unfinished = run.round_dir(2) / f"model.partial-{dead_pid()}"  # a crashed round's metrics do not count
    unfinished.mkdir(parents=True)
    (unfinished / "train_metrics.jsonl").write_text(json.dumps({"step": 9}) + "\n")
    run.rebuild_metrics()
    run.rebuild_metrics()  # idempotent: rewritten whole
    rows = [json.loads(line) for line in (run.root / METRICS_FILE).read_text().splitlines()]
    assert rows == [{"stage": "train", "round": 0, "step": 1, "loss": 0.5},
                    {"stage": "train", "round": 1, "method": "remax", "step": 1, "loss": -0.5}]


def test_top_level_files_are_written_atomically(tmp_path):
    run = RunDir(tmp_path / "run")
    path = run.save_text("report.md", "one")
    run.save_text("report.md", "two")
    assert path.read_text() == "two" and sorted(p.name for p in run.root.iterdir()) == ["report.md"]
    assert run.train_storage(3, "train") == str(tmp_path / "run" / "round_3" / "train")

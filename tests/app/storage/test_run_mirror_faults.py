"""Fault injection on a URI run directory: uploads that fail are retried, and a stage whose upload failed after
its local commit is uploaded by the next start. The fault is a filesystem wrapper around pyarrow's."""

import json
import threading

import pytest

from prefloop.app.storage import run_mirror
from prefloop.app.storage.rundir import RunDir, write_manifest


class FlakyFS:
    """pyarrow's filesystem, except that the next ``failures`` output streams fail to open."""

    def __init__(self, inner, failures):
        self.inner, self.failures, self.injected = inner, failures, 0

    def open_output_stream(self, path, *args, **kwargs):
        if self.failures > 0:
            self.failures -= 1
            self.injected += 1
            raise OSError(f"injected: connection reset writing {path}")
        return self.inner.open_output_stream(path, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def remote(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLOOP_RUNS_CACHE", str(tmp_path / "cache-a"))
    monkeypatch.setattr(run_mirror.Mirror, "backoff_s", 0.01)
    return tmp_path / "bucket" / "run", f"file://{tmp_path}/bucket/run"


def commit(run, r, stage, files):
    with run.commit(r, stage) as out:
        for name, text in files.items():
            (out / name).write_text(text)
        write_manifest(out, {"stage": stage, "round": r})


def test_a_transient_upload_error_is_retried(remote):
    remote_dir, uri = remote
    run = RunDir(uri)
    run.mirror.fs = flaky = FlakyFS(run.mirror.fs, failures=2)
    commit(run, 0, "rollout", {"pairs.parquet": "p0"})
    assert flaky.injected == 2
    assert (remote_dir / "round_0" / "rollout" / "manifest.json").is_file()
    assert (remote_dir / "round_0" / "rollout" / "pairs.parquet").read_text() == "p0"


def test_an_upload_that_fails_after_the_local_commit_is_completed_by_the_next_start(remote):
    remote_dir, uri = remote
    run = RunDir(uri)
    run.mirror.fs = flaky = FlakyFS(run.mirror.fs, failures=10**6)  # storage down for this whole process
    with pytest.raises(OSError, match="failed 4 times"):
        commit(run, 0, "model", {"config.json": "{}", "train_metrics.jsonl": '{"step": 1, "loss": 0.5}\n'})
    assert flaky.injected == run_mirror.Mirror.retries
    assert run.is_committed(0, "model")  # committed locally...
    assert not (remote_dir / "round_0" / "model" / "manifest.json").exists()  # ...not remotely
    again = RunDir(uri)  # the next start, same working copy, storage back
    again.sync()
    assert (remote_dir / "round_0" / "model" / "manifest.json").is_file()
    assert (remote_dir / "round_0" / "model" / "config.json").read_text() == "{}"
    again.rebuild_metrics()  # the metrics rows the killed driver never wrote
    rows = [json.loads(line) for line in (remote_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"stage": "train", "round": 0, "step": 1, "loss": 0.5}]
    again.rebuild_metrics()  # idempotent
    assert len((again.root / "metrics.jsonl").read_text().splitlines()) == 1


def test_tracking_folders_are_mirrored_and_pulled_elsewhere(remote, tmp_path, monkeypatch):
    remote_dir, uri = remote
    run = RunDir(uri)
    for rel, text in (("mlruns/0/meta.yaml", "m"), ("tensorboard/events.1", "e1"), ("logs/driver.log", "l")):
        (run.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (run.root / rel).write_text(text)
    run.save_text("report.md", "r")
    assert (remote_dir / "tensorboard" / "events.1").read_text() == "e1"
    assert (remote_dir / "mlruns" / "0" / "meta.yaml").read_text() == "m"
    (run.root / "tensorboard" / "events.1").write_text("e1+more")  # appended: uploaded again
    run.save_text("report.md", "r2")
    assert (remote_dir / "tensorboard" / "events.1").read_text() == "e1+more"
    monkeypatch.setenv("PREFLOOP_RUNS_CACHE", str(tmp_path / "cache-b"))
    other = RunDir(uri)
    other.pull()
    assert (other.root / "logs" / "driver.log").read_text() == "l"
    assert (other.root / "tensorboard" / "events.1").read_text() == "e1+more"


def test_upload_retries_back_off_doubling_and_only_storage_errors_are_retried(remote, monkeypatch):
    _, uri = remote
    run = RunDir(uri)
    waits, real_sleep = [], run_mirror.time.sleep

    def sleep(s):  # `time` is one module for every thread: other threads' sleeps (Ray's, when it is up) go through
        waits.append(s) if threading.current_thread() is threading.main_thread() else real_sleep(s)

    monkeypatch.setattr(run_mirror.time, "sleep", sleep)
    calls = []

    def down():
        calls.append(1)
        raise OSError("injected: storage down")

    with pytest.raises(OSError, match="upload of x to .* failed 4 times: injected") as err:
        run.mirror._retry("x", down)
    assert isinstance(err.value.__cause__, OSError) and len(calls) == run_mirror.Mirror.retries
    assert waits == [0.01, 0.02, 0.04]  # Mirror.backoff_s (0.01 here), doubled after each failed attempt

    def bug():
        calls.append(1)
        raise ValueError("not a storage error")

    calls.clear()
    with pytest.raises(ValueError, match="not a storage error"):
        run.mirror._retry("x", bug)
    assert calls == [1]  # a programming error is not retried

"""The run-directory lock (local file and URI lease) and the recipe check on resume."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from prefloop.app.storage import runlock
from prefloop.app.storage.rundir import RunDir
from prefloop.app.storage.runlock import LOCK_NAME, RecipeChangedError, RunLockedError, hold_run, lock_for
from tests.builders import dead_pid


def write_holder(path, **fields):
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
              "expires": time.time() + 100, "token": "other"}
    holder.update(fields)
    path.write_text(json.dumps(holder))


def test_a_second_driver_is_refused_naming_the_holder(tmp_path):
    run = RunDir(tmp_path / "run")
    with lock_for(run):
        record = json.loads((run.root / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["expires"] > time.time()
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            lock_for(run).acquire()
    assert not (run.root / LOCK_NAME).exists()  # released
    with lock_for(run):  # and takeable again
        pass


def test_a_lock_held_by_a_live_process_in_another_interpreter_refuses(tmp_path):
    run = RunDir(tmp_path / "run")
    code = ("import sys, time; from prefloop.app.storage.rundir import RunDir; from prefloop.app.storage.runlock import lock_for;"
            f"l = lock_for(RunDir({str(run.root)!r})).acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ})
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            lock_for(run).acquire()
    finally:
        proc.kill()
        proc.wait()
    with lock_for(run):  # its holder died: stale, taken over
        assert json.loads((run.root / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_stale_locks_are_taken_over_with_a_warning(tmp_path, caplog):
    run = RunDir(tmp_path / "run")
    run.root.mkdir(parents=True)
    write_holder(run.root / LOCK_NAME, pid=dead_pid())
    with caplog.at_level("WARNING"), lock_for(run):
        assert "no longer running" in caplog.text
    write_holder(run.root / LOCK_NAME, host="elsewhere", pid=1, expires=time.time() - 30)  # lease expired
    with caplog.at_level("WARNING"), lock_for(run):
        assert "lease expired" in caplog.text
    write_holder(run.root / LOCK_NAME, host="elsewhere", pid=1)  # live lease on another host
    with pytest.raises(RunLockedError, match="on elsewhere"):
        lock_for(run).acquire()


def test_the_heartbeat_renews_the_lease(tmp_path):
    run = RunDir(tmp_path / "run")
    with lock_for(run, lease_s=0.6):
        first = json.loads((run.root / LOCK_NAME).read_text())["expires"]
        time.sleep(0.5)
        assert json.loads((run.root / LOCK_NAME).read_text())["expires"] > first


def test_a_uri_run_is_locked_by_a_remote_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock._RemoteStore, "settle_s", 0.01)
    uri = f"file://{tmp_path}/bucket/run"
    monkeypatch.setenv("PREFLOOP_RUNS_CACHE", str(tmp_path / "cache-a"))
    a = RunDir(uri)
    monkeypatch.setenv("PREFLOOP_RUNS_CACHE", str(tmp_path / "cache-b"))  # another machine's working copy
    b = RunDir(uri)
    with lock_for(a):
        assert json.loads((tmp_path / "bucket" / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(RunLockedError):
            lock_for(b).acquire()
    assert not (tmp_path / "bucket" / "run" / LOCK_NAME).exists()
    with lock_for(b):
        pass


def test_a_resume_with_another_recipe_refuses_with_a_diff_unless_allowed(tmp_path):
    run = RunDir(tmp_path / "run")
    with hold_run(run, "name: x\nrollout:\n  num_samples: 4\n"):
        pass
    with hold_run(run, "name: x\nrollout:\n  num_samples: 4\n"):  # the same recipe resumes
        pass
    with pytest.raises(RecipeChangedError) as err:
        with hold_run(run, "name: x\nrollout:\n  num_samples: 8\n"):
            pass
    assert "-  num_samples: 4\n+  num_samples: 8" in str(err.value) and "--allow-recipe-change" in str(err.value)
    assert "num_samples: 4" in (run.root / "recipe.yaml").read_text()  # not rewritten
    assert not (run.root / LOCK_NAME).exists()  # the refusal released the lock
    with hold_run(run, "name: x\nrollout:\n  num_samples: 8\n", allow_change=True):
        pass
    assert "num_samples: 8" in (run.root / "recipe.yaml").read_text()
    changes = [json.loads(line) for line in (run.root / "recipe_changes.jsonl").read_text().splitlines()]
    assert len(changes) == 1 and "+  num_samples: 8" in changes[0]["diff"]


class BrokenStore(runlock._LocalStore):
    """The lock file's storage starts failing (``fail`` set): every read and write raises OSError."""

    fail = False

    def read(self):
        if self.fail:
            raise OSError("storage unavailable")
        return super().read()

    def replace_if(self, token, text):
        if self.fail:
            raise OSError("storage unavailable")
        return super().replace_if(token, text)


def commit_one(run, r=0, stage="rollout"):
    with run.commit(r, stage) as out:
        (out / "manifest.json").write_text("{}")


def test_a_failed_renewal_stops_every_later_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock.RunLock, "renew_wait_s", 0.01)
    run = RunDir(tmp_path / "run")
    run.root.mkdir(parents=True)
    store = BrokenStore(run.root / LOCK_NAME)
    lock = runlock.RunLock(store, str(run.root), lease_s=0.3, root=str(run.root)).acquire()
    try:
        commit_one(run, 0)  # held: commits
        store.fail = True
        time.sleep(0.5)  # a renewal fails (three tries)
        assert lock.lost and "could not be renewed" in lock.lost
        store.fail = False  # even with the storage back: the lease may have lapsed meanwhile
        with pytest.raises(runlock.RunLockLostError, match="lost the run lock"):
            commit_one(run, 1)
        with pytest.raises(runlock.RunLockLostError):
            run.save_text("report.md", "x")
        assert not run.is_committed(1, "rollout") and not (run.root / "report.md").exists()
    finally:
        lock.release()


def test_another_holder_seen_stops_the_next_commit_at_once(tmp_path):
    run = RunDir(tmp_path / "run")
    with lock_for(run):  # a long lease: the heartbeat does not beat in this test
        write_holder(run.root / LOCK_NAME, token="intruder")
        with pytest.raises(runlock.RunLockLostError, match="token intruder"):
            commit_one(run, 0)
        assert not run.is_committed(0, "rollout")
    assert json.loads((run.root / LOCK_NAME).read_text())["token"] == "intruder"  # not removed on release


def test_a_storage_error_reading_the_remote_lease_is_not_no_lock(tmp_path, monkeypatch):
    uri = f"file://{tmp_path}/bucket/run"
    monkeypatch.setenv("PREFLOOP_RUNS_CACHE", str(tmp_path / "cache-a"))
    run = RunDir(uri)

    class Down:
        def __getattr__(self, name):
            return getattr(run.mirror.fs, name)

        def open_input_stream(self, path):
            raise OSError("When reading information for key 'run/.prefloop-lock': AWS Error ACCESS_DENIED")

        def get_file_info(self, path):
            raise OSError("AWS Error ACCESS_DENIED")

    store = runlock._RemoteStore(Down(), f"{run.mirror.base}/{LOCK_NAME}")
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        runlock.RunLock(store, uri).acquire()
    assert not (tmp_path / "bucket" / "run" / LOCK_NAME).exists()


def test_a_stale_lock_taken_by_two_drivers_at_once_is_held_by_one(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    run.root.mkdir(parents=True)
    write_holder(run.root / LOCK_NAME, pid=dead_pid())
    real = runlock._LocalStore.replace_if

    def raced(self, token, text):  # the other driver's takeover lands between our read and our write
        write_holder(self.path, token="faster")
        return real(self, token, text)

    monkeypatch.setattr(runlock._LocalStore, "replace_if", raced)
    with pytest.raises(RunLockedError, match="at the same time.*token faster"):
        lock_for(run).acquire()
    assert json.loads((run.root / LOCK_NAME).read_text())["token"] == "faster"


def test_a_uri_run_is_locked_before_anything_is_pulled(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock._RemoteStore, "settle_s", 0.01)
    uri = f"file://{tmp_path}/bucket/run"
    monkeypatch.setenv("PREFLOOP_RUNS_CACHE", str(tmp_path / "cache-a"))
    a = RunDir(uri)
    with hold_run(a, "name: x\n"):
        commit_one(a, 0)
        monkeypatch.setenv("PREFLOOP_RUNS_CACHE", str(tmp_path / "cache-b"))
        b = RunDir(uri)
        with pytest.raises(RunLockedError):
            with hold_run(b, "name: x\n"):
                pass
        assert not (b.root / "round_0").exists() and not (b.root / "recipe.yaml").exists()


def test_the_same_recipe_in_another_key_order_is_not_a_change(tmp_path):
    from prefloop.app.storage.rundir import RunDir

    run = RunDir(tmp_path / "run")
    runlock.check_recipe(run, "name: x\nseed: 1\n", False)
    runlock.check_recipe(run, "seed: 1\nname: x\n", False)  # the same values, dumped in another order
    with pytest.raises(runlock.RecipeChangedError, match="seed"):
        runlock.check_recipe(run, "name: x\nseed: 2\n", False)

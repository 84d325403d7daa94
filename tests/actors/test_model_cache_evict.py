"""The node model cache evicts old copies, never one a process still uses (no Ray: the cache's file logic)."""

import os
import subprocess
import sys
import time

from prefloop.actors import model_cache


def make_copies(root, n):
    copies = []
    for i in range(n):
        copy = root / f"digest{i:02d}"
        copy.mkdir(parents=True)
        (copy / ".complete").touch()
        (copy / "model_info.json").write_text('{"control_token": "<|good|>"}')
        os.utime(copy, (time.time() - 100 + i, time.time() - 100 + i))  # digest00 is the oldest
        copies.append(copy)
    return copies


def test_a_copy_in_use_is_never_evicted(tmp_path):
    copies = make_copies(tmp_path, model_cache.KEEP + 3)
    # another process (a Serve replica) holds the oldest copy
    code = ("import sys, time, pathlib; from prefloop.actors import model_cache as m;"
            f"m.hold_copy('serve', pathlib.Path({str(copies[0])!r})); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        model_cache._evict(tmp_path, keep=copies[-1])
        assert copies[0].is_dir() and (copies[0] / "model_info.json").is_file()  # in use: kept
        assert not copies[1].exists() and not copies[2].exists()  # old and unused: evicted
        assert all(c.is_dir() for c in copies[3:])  # the newest KEEP
    finally:
        proc.kill()
        proc.wait()
    model_cache._evict(tmp_path, keep=copies[-1])  # let go (its process ended): evicted now
    assert not copies[0].exists()


def test_a_role_lets_go_of_its_previous_copy(tmp_path):
    a, b = make_copies(tmp_path, 2)
    model_cache.hold_copy("generator-test", a)
    model_cache.hold_copy("generator-test", b)  # a reload: the old copy is no longer in use
    with open(tmp_path / f"{a.name}.use", "a") as fh:
        import fcntl

        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise if still held
    model_cache._IN_USE.pop("generator-test")[1].close()

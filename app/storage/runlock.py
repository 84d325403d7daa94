"""One driver per run directory: a lock (local file or remote lease) and a check that a resume keeps its recipe.

Two drivers on one run directory would each delete the other's unfinished stages and interleave commits, and a
resume with other ``--set`` values would silently mix settings across rounds. So a driver first takes the run:

- local run directory: ``RUN_DIR/.prefloop-lock`` (JSON: host, pid, start time, lease expiry), created
  exclusively. A lock whose pid is dead on this host, or whose lease expired (a holder on another host that
  stopped renewing), is stale: it is taken over with a warning. Otherwise the second driver is refused with a
  message naming the holder.
- URI run directory: the same JSON as an object next to the run (``RUN_URI/.prefloop-lock``). Object stores have
  no exclusive create, so a taker writes its lease, waits a moment and reads it back: the last writer wins and
  the other sees a foreign holder and stops.
- both: a heartbeat thread renews the lease every ``lease_s / 3`` seconds while the run is held.

A resume compares the resolved recipe with the saved ``recipe.yaml``; a difference refuses with a unified diff
unless ``allow_change`` (``--allow-recipe-change``), which appends the diff to ``recipe_changes.jsonl``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

LOCK_NAME = ".prefloop-lock"
RECIPE_NAME = "recipe.yaml"
CHANGES_NAME = "recipe_changes.jsonl"
LEASE_S = 120.0


class RunLockedError(RuntimeError):
    """Another live driver holds the run directory."""


class RecipeChangedError(RuntimeError):
    """A resume's resolved recipe differs from the run's saved one."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (EPERM: it exists, owned by someone else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(holder: dict[str, Any], now: float | None = None) -> str | None:
    """Why a lock record no longer protects anything (None: it does)."""
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", -1))):
        return f"pid {holder.get('pid')} is no longer running on {holder.get('host')}"
    if float(holder.get("expires", 0)) < now:
        return f"its lease expired {now - float(holder.get('expires', 0)):.0f} s ago"
    return None


def describe(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {started}, token {holder.get('token')})"


class _LocalStore:
    def __init__(self, path: Path):
        self.path = path

    def create(self, text: str) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return True

    def read(self) -> str | None:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None

    def write(self, text: str) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


class _RemoteStore:
    """The lease object through the mirror's ``pyarrow.fs`` (no exclusive create: write, settle, read back)."""

    settle_s = 0.5

    def __init__(self, fs: Any, path: str):
        self.fs, self.path = fs, path

    def create(self, text: str) -> bool:
        if self.read() is not None:
            return False
        self.write(text)
        time.sleep(self.settle_s)
        return self.read() == text

    def read(self) -> str | None:
        try:
            with self.fs.open_input_stream(self.path) as fh:
                return fh.read().decode()
        except (FileNotFoundError, OSError):
            return None

    def write(self, text: str) -> None:
        with self.fs.open_output_stream(self.path) as out:
            out.write(text.encode())

    def delete(self) -> None:
        try:
            self.fs.delete_file(self.path)
        except (FileNotFoundError, OSError):
            pass


class RunLock:
    """Hold a run directory: ``acquire()`` (or ``with``), a heartbeat that renews the lease, ``release()``."""

    def __init__(self, store: Any, where: str, lease_s: float = LEASE_S):
        self.store, self.where, self.lease_s = store, where, lease_s
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                       "token": os.urandom(4).hex()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _text(self) -> str:
        return json.dumps({**self.record, "expires": time.time() + self.lease_s})

    def _holder(self) -> dict[str, Any] | None:
        text = self.store.read()
        try:
            return json.loads(text) if text else None
        except ValueError:
            return {"host": "?", "pid": -1, "expires": 0, "token": "unreadable"}

    def acquire(self) -> "RunLock":
        if not self.store.create(self._text()):
            holder = self._holder() or {}
            if holder.get("token") == self.record["token"]:
                pass  # read back our own write (remote store)
            elif (why := is_stale(holder)) is None:
                raise RunLockedError(f"{self.where} is in use by {describe(holder)}; wait for it to finish, stop "
                                     f"it, or remove {LOCK_NAME} if that driver is gone")
            else:
                log.warning("%s: taking over a stale lock of %s: %s", self.where, describe(holder), why)
                self.store.write(self._text())
        self._thread = threading.Thread(target=self._heartbeat, name="prefloop-run-lock", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            holder = self._holder()
            if holder is None or holder.get("token") != self.record["token"]:
                log.error("%s: the run lock was taken by %s while this driver held it", self.where,
                          describe(holder or {}))
                return
            try:
                self.store.write(self._text())
            except OSError:  # a storage hiccup: the lease is long enough for the next beat
                log.warning("%s: could not renew the run lock", self.where, exc_info=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._holder()
        if holder is not None and holder.get("token") == self.record["token"]:
            self.store.delete()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_for(run: Any, lease_s: float = LEASE_S) -> RunLock:
    """The lock of a ``RunDir``: the remote lease for a URI run, else the local lock file."""
    if run.mirror is not None:
        return RunLock(_RemoteStore(run.mirror.fs, f"{run.mirror.base}/{LOCK_NAME}"), run.uri, lease_s)
    run.root.mkdir(parents=True, exist_ok=True)
    return RunLock(_LocalStore(run.root / LOCK_NAME), str(run.root), lease_s)


def recipe_diff(saved: str, resolved: str, where: str) -> str:
    return "".join(difflib.unified_diff(saved.splitlines(keepends=True), resolved.splitlines(keepends=True),
                                        fromfile=f"{where}/{RECIPE_NAME} (saved)", tofile="resolved now"))


def check_recipe(run: Any, resolved: str, allow_change: bool) -> None:
    """Save the resolved recipe; on a resume refuse a different one (or, allowed, record the change)."""
    path = run.root / RECIPE_NAME
    saved = path.read_text(encoding="utf-8") if path.is_file() else None
    if saved is not None and saved != resolved:
        diff = recipe_diff(saved, resolved, str(run.uri))
        if not allow_change:
            raise RecipeChangedError(f"{run.uri}: this run was started with another recipe; resuming it with "
                                     f"this one would mix settings across rounds. Difference:\n{diff}"
                                     f"Use the same recipe and --set values, or pass --allow-recipe-change.")
        log.warning("%s: the recipe changed on resume (--allow-recipe-change):\n%s", run.uri, diff)
        with open(run.root / CHANGES_NAME, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"at": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
                                 "diff": diff}) + "\n")
    if saved != resolved:
        run.save_text(RECIPE_NAME, resolved)


@contextmanager
def hold_run(run: Any, resolved_recipe: str, allow_change: bool = False) -> Iterator[RunLock]:
    """Lock the run directory, then check and save its recipe; the lock is released on exit."""
    with lock_for(run) as lock:
        check_recipe(run, resolved_recipe, allow_change)
        yield lock

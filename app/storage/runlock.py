"""One driver per run directory: a lock (local file or remote lease) and a check that a resume keeps its recipe.

Two drivers on one run directory would each delete the other's unfinished stages and interleave commits, and a
resume with other ``--set`` values would silently mix settings across rounds. So a driver first takes the run:

- local run directory: ``RUN_DIR/.prefloop-lock`` (JSON: host, pid, start time, lease expiry), created
  exclusively. A lock whose pid is dead on this host, or whose lease expired (a holder on another host that
  stopped renewing), is stale: it is taken over with a warning. Otherwise the second driver is refused with a
  message naming the holder. Takeovers and renewals are compare-and-swap writes (read, compare the holder's
  token, write, all under ``flock`` on ``.prefloop-lock.guard``).
- URI run directory: the same JSON as an object next to the run (``RUN_URI/.prefloop-lock``). ``pyarrow.fs``
  offers no exclusive create or conditional write, so a taker writes its lease, waits ``settle_s`` and reads it
  back: of two takers whose writes land within that window the last writer wins and the other stops. Two
  whose read-backs both precede the other's write could both start; each re-reads the lease before every
  commit (``verify``), so the one overwritten stops at its next commit at the latest.
- both: a heartbeat thread renews the lease every ``lease_s / 3`` seconds while the run is held. A failed
  renewal (after a few quick retries) or another holder seen marks the lock lost: the driver stops with
  ``RunLockLostError`` at its next commit or top-level write, before writing it. "No lock" is only a lock
  that does not exist; any other storage error is an error.
- the run is locked before anything is pulled from or uploaded to its URI (``hold_run`` calls ``run.sync()``).

A resume compares the resolved recipe with the saved ``recipe.yaml``; a difference refuses with a unified diff
unless ``allow_change`` (``--allow-recipe-change``), which appends the diff to ``recipe_changes.jsonl``.
"""

from __future__ import annotations

import difflib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

log = logging.getLogger(__name__)

LOCK_NAME = ".prefloop-lock"
RECIPE_NAME = "recipe.yaml"
CHANGES_NAME = "recipe_changes.jsonl"
LEASE_S = 120.0


class RunLockedError(RuntimeError):
    """Another live driver holds the run directory."""


class RunLockLostError(RuntimeError):
    """This driver no longer holds its run directory's lock (a failed renewal, or another holder)."""


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
    """The lock file, with a compare-and-swap: a read-compare-write under ``flock`` on a guard file beside it."""

    conditional = True

    def __init__(self, path: Path):
        self.path = path
        self.guard = path.with_name(path.name + ".guard")

    def create(self, text: str) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return True

    def read(self) -> str | None:
        """The lock's text; None only when there is no lock file (any other error propagates)."""
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None

    def replace_if(self, token: str | None, text: str) -> bool:
        """Write ``text`` only if the lock still holds ``token`` (read and write under one ``flock``)."""
        with open(self.guard, "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            if token_of(self.read()) != token:
                return False
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path)
            return True

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


class _RemoteStore:
    """The lease object through the mirror's ``pyarrow.fs``. ``pyarrow.fs`` has no conditional write (no
    if-match / if-none-match), so a write is followed by a settle and a read-back, and every commit re-reads
    the lease (``RunLock.verify``): see the README for what that guarantees."""

    conditional = False
    settle_s = 0.5

    def __init__(self, fs: Any, path: str):
        self.fs, self.path = fs, path

    def create(self, text: str) -> bool:
        if self.read() is not None:
            return False
        return self._write_and_read_back(text)

    def read(self) -> str | None:
        """The lease's text; None only when the object does not exist (a storage error propagates)."""
        from pyarrow import fs

        try:
            with self.fs.open_input_stream(self.path) as fh:
                return fh.read().decode()
        except FileNotFoundError:
            return None
        except OSError:
            if self.fs.get_file_info(self.path).type == fs.FileType.NotFound:
                return None
            raise

    def replace_if(self, token: str | None, text: str) -> bool:
        if token_of(self.read()) != token:
            return False
        return self._write_and_read_back(text)

    def _write_and_read_back(self, text: str) -> bool:
        self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(self.path) as out:
            out.write(text.encode())
        time.sleep(self.settle_s)
        return self.read() == text

    def delete(self) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass


def token_of(text: str | None) -> str | None:
    """The holder token of a lock text (None: no lock; ``unreadable``: a lock that is not JSON)."""
    if text is None:
        return None
    try:
        return str(json.loads(text).get("token"))
    except (ValueError, AttributeError):
        return "unreadable"


_HELD: dict[str, "RunLock"] = {}  # local run root -> the lock this process holds on it


def check_held(root: Path | str) -> None:
    """Before a commit: if this process holds the run's lock, make sure it still does (``RunLockLostError``)."""
    lock = _HELD.get(str(root))
    if lock is not None:
        lock.verify()


class RunLock:
    """Hold a run directory: ``acquire()`` (or ``with``), a heartbeat that renews the lease, ``release()``.

    Fail closed: a renewal that fails (a storage error, tried ``renew_tries`` times) or a lock seen with
    another holder marks the lock lost; from then on ``verify`` (called before every commit and top-level
    write of the run, ``check_held``) raises ``RunLockLostError``, so nothing this driver does afterwards
    commits."""

    renew_tries, renew_wait_s = 3, 1.0

    def __init__(self, store: Any, where: str, lease_s: float = LEASE_S, root: str | None = None):
        self.store, self.where, self.lease_s, self.root = store, where, lease_s, root
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                       "token": os.urandom(4).hex()}
        self.lost: str | None = None
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
                if not self.store.replace_if(holder.get("token"), self._text()):
                    now = self._holder() or {}
                    raise RunLockedError(f"{self.where}: another driver took the stale lock at the same time: "
                                         f"{describe(now)}")
        if self.root is not None:
            _HELD[self.root] = self
        self._thread = threading.Thread(target=self._heartbeat, name="prefloop-run-lock", daemon=True)
        self._thread.start()
        return self

    def verify(self) -> None:
        """Raise ``RunLockLostError`` unless this driver still holds the lock (one read of the lock)."""
        if self.lost is None:
            try:
                holder = self._holder()
            except OSError as err:
                self._lose(f"the run lock could not be read: {err}")
            else:
                if holder is None or holder.get("token") != self.record["token"]:
                    self._lose(f"the run lock is now held by {describe(holder) if holder else 'nobody'}")
        if self.lost is not None:
            raise RunLockLostError(f"{self.where}: this driver lost the run lock ({self.lost}); it stops here "
                                   f"and commits nothing more. Resume the run once the other driver is done.")

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            log.error("%s: %s; this driver commits nothing more", self.where, why)

    def _renew(self) -> None:
        """One renewal: a conditional rewrite of our own lease, storage errors retried a few times."""
        for attempt in range(1, self.renew_tries + 1):
            try:
                if not self.store.replace_if(self.record["token"], self._text()):
                    holder = self._holder()
                    return self._lose(f"the run lock was taken by {describe(holder) if holder else 'nobody'}")
                return None
            except OSError as err:
                if attempt == self.renew_tries:
                    return self._lose(f"the run lock could not be renewed ({attempt} tries): {err}")
                log.warning("%s: renewing the run lock failed (%s); retrying", self.where, err)
                if self._stop.wait(self.renew_wait_s):
                    return None
        return None

    def _heartbeat(self) -> None:
        while self.lost is None and not self._stop.wait(self.lease_s / 3):
            self._renew()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.root is not None and _HELD.get(self.root) is self:
            del _HELD[self.root]
        if self.lost is not None:
            return  # not ours any more: leave it
        try:
            if token_of(self.store.read()) == self.record["token"]:
                self.store.delete()
        except OSError:  # the lease then expires on its own; another driver waits until then
            log.error("%s: could not release the run lock; it expires in %.0f s", self.where, self.lease_s,
                      exc_info=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_for(run: Any, lease_s: float = LEASE_S) -> RunLock:
    """The lock of a ``RunDir``: the remote lease for a URI run, else the local lock file."""
    if run.mirror is not None:
        return RunLock(_RemoteStore(run.mirror.fs, f"{run.mirror.base}/{LOCK_NAME}"), run.uri, lease_s,
                       str(run.root))
    run.root.mkdir(parents=True, exist_ok=True)
    return RunLock(_LocalStore(run.root / LOCK_NAME), str(run.root), lease_s, str(run.root))


def recipe_diff(saved: str, resolved: str, where: str) -> str:
    return "".join(difflib.unified_diff(saved.splitlines(keepends=True), resolved.splitlines(keepends=True),
                                        fromfile=f"{where}/{RECIPE_NAME} (saved)", tofile="resolved now"))


def check_recipe(run: Any, resolved: str, allow_change: bool) -> None:
    """Save the resolved recipe; on a resume refuse a different one (or, allowed, record the change)."""
    path = run.root / RECIPE_NAME
    saved = path.read_text(encoding="utf-8") if path.is_file() else None
    # the same values in another key order (a newer prefloop dumps sections differently) are the same recipe
    if saved is not None and yaml.safe_load(saved) != yaml.safe_load(resolved):
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
    """Lock the run directory, then (a URI run) pull it and upload what it lacks, then check and save its
    recipe; the lock is released on exit. Nothing is read from or written to the run before the lock is held."""
    with lock_for(run) as lock:
        run.sync()
        check_recipe(run, resolved_recipe, allow_change)
        yield lock

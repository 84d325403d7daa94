"""The driver's heartbeat: ``RUN_DIR/heartbeat.json``, rewritten every few seconds while a run is alive.

It says what the driver is doing now (round, stage, progress of the stage, since when), who it is (pid, host)
and when it last wrote (``time``). ``prefloop status`` reads it: a heartbeat older than ``STALE_S`` (or whose
pid is gone on this host) means the driver died without a word, e.g. killed by SIGKILL or the node lost.
A run that ends writes ``state: finished`` or ``state: failed`` (with the error) and stops beating.

For a run directory on a URI the local copy is uploaded at most every ``PUSH_EVERY_S`` seconds (and at the
end), so ``prefloop status s3://...`` from another machine sees it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

HEARTBEAT = "heartbeat.json"
INTERVAL_S = 5.0
STALE_S = 60.0  # twelve missed beats: the driver is gone (or its machine is)
PUSH_EVERY_S = 30.0


class Heartbeat:
    """A daemon thread that rewrites ``path`` every ``interval_s`` with the current state (``update`` also
    writes at once). ``push``: called with the path after a write, at most every ``PUSH_EVERY_S`` (URI runs)."""

    def __init__(self, path: Path, interval_s: float = INTERVAL_S, push: Callable[[Path], None] | None = None,
                 **fields: Any):
        self.path, self.interval_s, self.push = Path(path), interval_s, push
        self.state: dict[str, Any] = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(),
                                      "started": time.time(), **fields}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pushed = 0.0
        self._thread = threading.Thread(target=self._beat, name="prefloop-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self.write()
        self._thread.start()
        return self

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.state.update(fields)
        self.write()

    def set(self, **fields: Any) -> None:
        """Change the state without writing now (the next beat writes it): for per-row progress."""
        with self._lock:
            self.state.update(fields)

    def write(self, force_push: bool = False) -> None:
        with self._lock:
            state = dict(self.state, time=time.time())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(state, default=str) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
            if self.push is not None and (force_push or time.monotonic() - self._pushed >= PUSH_EVERY_S):
                self._pushed = time.monotonic()
                self.push(self.path)
        except Exception:  # the heartbeat must never take the run down
            log.warning("could not write the heartbeat %s", self.path, exc_info=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write()

    def stop(self, state: str, **fields: Any) -> None:
        """The run ended (``finished`` or ``failed``): one last write, no more beats."""
        self._stop.set()
        with self._lock:
            self.state.update(fields, state=state, ended=time.time())
        self.write(force_push=True)


def read_heartbeat(text: str | None) -> dict[str, Any] | None:
    """The parsed heartbeat, or None (absent, or cut by a crash mid-write: then there is nothing to say)."""
    if not text:
        return None
    try:
        hb = json.loads(text)
    except json.JSONDecodeError:
        return None
    return hb if isinstance(hb, dict) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def liveness(hb: dict[str, Any], now: float | None = None, host: str | None = None) -> tuple[str, float]:
    """(``running`` | ``stale`` | ``finished`` | ``failed``, seconds since the last beat).

    Stale: no beat for ``STALE_S``, or the driver's pid is gone on this very host (known at once)."""
    now = time.time() if now is None else now
    age = max(0.0, now - float(hb.get("time", 0)))
    state = str(hb.get("state", "running"))
    if state != "running":
        return state, age
    same_host = hb.get("host") == (host or socket.gethostname())
    if age > STALE_S or (same_host and isinstance(hb.get("pid"), int) and not pid_alive(hb["pid"])):
        return "stale", age
    return "running", age

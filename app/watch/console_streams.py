"""Output that bypasses Python logging, kept off the quiet console (``app/watch/console.py``) and put in the driver log.

Two kinds of lines reached the quiet console of every ``make demo`` although no prefloop logger wrote them:

- Ray's C++ core worker writes its own ERROR lines straight to file descriptor 2, for example
  ``core_worker.cc:2465: Actor ... has constructor arguments in the object store and max_restarts > 0``, which
  every Ray Data actor pool triggers (Ray Data puts the pool's function in the object store). ``NativeStderr``
  points descriptor 2 at the driver log while a run is attached and gives Python's ``sys.stderr`` a stream on
  the terminal's descriptor, so prefloop's own warnings and errors still reach the person.
- The raylet's notices (``(raylet) WARNING: 8 PYTHON worker processes have been started ...``) come through
  Ray's error-listener thread, which prints them to ``sys.stdout``. ``route_raylet_notices`` sends them to the
  ``ray.raylet`` logger instead (the driver log; the console shows them with ``-v``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class NativeStderr:
    """While active: descriptor 2 (native writers, child processes) goes to ``log_path``; ``sys.stderr`` to the
    terminal as before."""

    def __init__(self) -> None:
        self._saved_fd: int | None = None
        self._saved_stderr: Any = None
        self._log: Any = None

    @property
    def active(self) -> bool:
        return self._saved_fd is not None

    def start(self, log_path: Path) -> None:
        if self.active:
            return
        try:
            fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):  # a replaced stderr (pytest, notebooks): leave it alone
            return
        if fd != 2:
            return
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in stop)
        os.dup2(self._log.fileno(), 2)
        self._saved_stderr = sys.stderr
        sys.stderr = open(self._saved_fd, "w", buffering=1, encoding=self._saved_stderr.encoding or "utf-8",
                          errors="backslashreplace", closefd=False)

    def stop(self) -> None:
        if not self.active:
            return
        sys.stderr.flush()
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        sys.stderr, self._saved_fd = self._saved_stderr, None
        self._log.close()


def route_raylet_notices() -> None:
    """Ray's error-listener thread prints the raylet's notices to stdout: log them to ``ray.raylet``."""
    try:
        import ray._private.worker as ray_worker
    except ImportError:
        return
    original = ray_worker.print_to_stdstream
    if getattr(original, "_prefloop_routed", False):
        return

    def print_to_stdstream(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            for line in data.get("lines", []):
                logging.getLogger("ray.raylet").warning("%s", line)
            return
        original(data, ignore_prefix)

    print_to_stdstream._prefloop_routed = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = print_to_stdstream

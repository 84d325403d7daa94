"""How the quiet console routes log records: prefloop's own events and warnings to the console, the libraries'
records to the driver log (``RUN_DIR/logs/driver.log``), and the console's handler to whatever ``sys.stdout`` is
when a record is written. Used by ``app/watch/console.py``.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

if TYPE_CHECKING:
    from prefloop.app.watch.console import Console

LIBRARIES = ("ray", "vllm", "transformers", "torch", "llm_blender", "urllib3", "filelock", "py.warnings",
             "asyncio", "uvicorn", "fastapi", "httpx", "peft", "datasets", "tensorboardX", "mlflow", "wandb")
PLAIN_EVERY_S = 60.0
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ROUND_LOGGER = "prefloop.app.rounds.loop"  # its INFO lines are the per-round events (kept under ray job submit)
STEP_LOGGERS = ("prefloop.tinyworld.assets",)  # INFO lines that are progress a person waits on (the tiny-model build)


class QuietFilter(logging.Filter):
    """Quiet console: prefloop's warnings and anyone's errors, the tiny-model build's steps; without a TTY also
    the round loop's INFO lines (``round 0: 40 pairs, win rate vs base ...``), the events job logs are read for."""

    def __init__(self, console: "Console"):
        super().__init__()
        self.console = console

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or (record.levelno >= logging.WARNING and record.name.startswith("prefloop")):
            return True
        if record.levelno >= logging.INFO and record.name in STEP_LOGGERS:
            return True
        return record.levelno >= logging.INFO and record.name == ROUND_LOGGER and not self.console.tty


class QuietFormatter(logging.Formatter):
    """Time and message for an INFO event; level and logger too for a warning or an error."""

    def format(self, record: logging.LogRecord) -> str:
        self._style._fmt = "%(asctime)s %(message)s" if record.levelno < logging.WARNING else FORMAT
        return super().format(record)


def route_library_logs() -> None:
    """Send the libraries' loggers to the root handlers (the driver log; the console only per its filter):
    Ray, Ray Data, Ray Serve and transformers install their own stderr handlers and stop propagation."""
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] not in LIBRARIES and name not in LIBRARIES:
            continue
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is not logging.FileHandler and isinstance(handler, logging.StreamHandler):
                logger.removeHandler(handler)
        logger.propagate = True


class ConsoleStream:
    """A stream for the console log handler that does not tear an open progress bar. ``out`` None: whatever
    ``sys.stderr`` is when written to (``NativeStderr`` replaces it during a quiet run)."""

    def __init__(self, out: Any = None):
        self._out = out

    @property
    def out(self) -> Any:
        return self._out or sys.stderr

    def write(self, text: str) -> None:
        with tqdm.external_write_mode(file=self.out):
            self.out.write(text)

    def flush(self) -> None:
        self.out.flush()

"""What a person running prefloop sees: a quiet console, with the libraries' logs in files.

By default (the CLI without ``-v``) the console shows only prefloop's own events: a header (recipe, run
directory, driver log, Ray dashboard and where Ray keeps the workers' logs), one progress bar per stage (done of
total, tokens/s where the rows carry token counts, elapsed and ETA), the round table growing as rounds commit,
and a closing summary. Everything the libraries log (Ray, Ray Data, Ray Train/Serve, vLLM, transformers, Python
warnings) goes to ``RUN_DIR/logs/driver.log`` instead; the Ray workers' own output (vLLM engines, trainers) stays
in Ray's session log folder (``log_to_driver`` off), whose path the header prints. Warnings of prefloop itself
and every error still reach the console. Lines that bypass Python logging (Ray's C++ core worker on
descriptor 2, the raylet's notices) go to the driver log too (``app/watch/console_streams.py``). ``-v`` puts
everything back on the console (and keeps the file).

Without a TTY (``ray job submit``, a pipe) the same events print as one plain line each, no bars; a long
stage adds a progress line at most every ``PLAIN_EVERY_S``.

One console per process (``get()``), because a process has one stdout; the default one (library use, tests)
is verbose: it touches no logging handler, it only adds the driver log file and the heartbeat
(``app/storage/heartbeat.py``) while a run is attached.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from prefloop.app.storage.heartbeat import HEARTBEAT, Heartbeat
from prefloop.app.watch.console_logging import (
    FORMAT,
    PLAIN_EVERY_S,
    ConsoleStream,
    QuietFilter,
    QuietFormatter,
    route_library_logs,
)
from prefloop.app.watch.console_streams import NativeStderr, route_raylet_notices

log = logging.getLogger(__name__)
class Console:
    """The events of a run, shown as bars (TTY) or plain lines; see the module docstring."""

    def __init__(self, verbose: bool = True, out: Any = None, tty: bool | None = None):
        self.verbose, self._out, self._tty = verbose, out, tty
        self.log_path: Path | None = None
        self.ray_logs: str | None = None
        self.heartbeat: Heartbeat | None = None
        self.round: int | None = None
        self._file: logging.Handler | None = None
        self._bar: Any = None
        self._bar_is_activity = False
        self._activity: str | None = None
        self._activity_t0 = time.monotonic()
        self._table_shown = False
        self._lock = threading.RLock()
        self._ticker: threading.Thread | None = None
        self._root_level = logging.NOTSET
        self._native = NativeStderr()

    @property
    def out(self) -> Any:
        return self._out or sys.stdout  # looked up when used: sys.stdout may be replaced (pytest, notebooks)

    @property
    def tty(self) -> bool:
        return bool(getattr(self.out, "isatty", lambda: False)()) if self._tty is None else self._tty

    # -- logging -------------------------------------------------------------------------------------------
    @property
    def log_to_driver(self) -> bool:
        """Stream the Ray workers' stdout/stderr to this console (verbose only)."""
        return self.verbose

    def install_logging(self) -> None:
        """The CLI's logging: the console handler (everything with -v; else prefloop warnings and errors)."""
        root = logging.getLogger()
        root.setLevel(logging.DEBUG if self.verbose else logging.INFO)
        handler = logging.StreamHandler(ConsoleStream())
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        if not self.verbose:
            handler.setFormatter(QuietFormatter(FORMAT, datefmt="%H:%M:%S"))
            handler.addFilter(QuietFilter(self))
            logging.captureWarnings(True)  # Python warnings (deprecations of the libraries) to the log file
        root.addHandler(handler)
        self._start_ticker()

    def before_ray(self) -> None:
        if not self.verbose:
            route_library_logs()

    def ray_started(self) -> None:
        """After ``ray.init``: reroute what Ray set up, turn Ray Data's own progress dumps off (quiet mode),
        and print where the dashboard and the workers' logs are."""
        import ray

        if not self.verbose:
            import ray.data

            ray.data.DataContext.get_current().enable_progress_bars = False
            route_library_logs()
            route_raylet_notices()
        try:
            url = ray._private.worker.get_dashboard_url()
            self.ray_logs = ray._private.worker._global_node.get_logs_dir_path()
        except Exception:  # joined clusters may not expose these: the run goes on without
            url, self.ray_logs = None, None
        where = f"dashboard http://{url}" if url else "no dashboard"
        self.line(f"  ray         {ray.cluster_resources().get('CPU', 0):.0f} CPUs · {where}")
        if self.ray_logs:
            self.line(f"  ray logs    {self.ray_logs}  (workers: vLLM, scorers, trainers)")

    # -- a run ---------------------------------------------------------------------------------------------
    def attach(self, run_root: Path, recipe_name: str, push: Callable[[Path], None] | None = None) -> "Console":
        """A run starts: its driver log file, its heartbeat, the header."""
        self.detach()
        run_root = Path(run_root)
        self.log_path = run_root / "logs" / "driver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = logging.FileHandler(self.log_path, encoding="utf-8")
        if not self.verbose:  # native stderr lines (Ray's C++ core worker) into the driver log too
            self._native.start(self.log_path)
        self._file.setFormatter(logging.Formatter(FORMAT))
        root = logging.getLogger()
        self._root_level = root.level
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)  # the driver log gets INFO even where nobody set logging up
        root.addHandler(self._file)
        self.heartbeat = Heartbeat(run_root / HEARTBEAT, push=push, recipe=recipe_name,
                                   run_dir=str(run_root), driver_log=str(self.log_path)).start()
        self._table_shown = False
        self.line(f"prefloop · {recipe_name}")
        self.line(f"  run dir     {run_root}")
        self.line(f"  driver log  {self.log_path}" + ("" if self.verbose else "  (-v shows it here)"))
        self._start_ticker()
        return self

    def detach(self, error: BaseException | None = None) -> None:
        """The run ends (an error: the heartbeat says failed); idempotent."""
        self.end_activity()
        if error is None:
            error = sys.exc_info()[1]
        if self.heartbeat is not None:
            if error is None:
                self.heartbeat.stop("finished")
            else:
                self.heartbeat.stop("failed", error=f"{type(error).__name__}: {error}")
            self.heartbeat = None
        self._native.stop()
        if self._file is not None:
            logging.getLogger().setLevel(self._root_level)
            logging.getLogger().removeHandler(self._file)
            self._file.close()
            self._file = None

    def activity(self, name: str, round_idx: int | None = None) -> None:
        """The driver started an activity: setup, base_answers, rollout, train, swap, eval or serve (the
        heartbeat's ``stage`` field, which ``prefloop status`` reads)."""
        with self._lock:
            self.end_activity()
            self.round, self._activity, self._activity_t0 = round_idx, name, time.monotonic()
            if not self.verbose:
                route_library_logs()  # Serve and Ray Data set their handlers up late
            if self.heartbeat is not None:
                self.heartbeat.update(round=round_idx, stage=name, stage_started=time.time(), done=None,
                                      total=None, unit=None, tokens_per_s=None)
            label = self._label(name)
            if self.tty:
                self._bar = tqdm(total=None, desc=label, bar_format="{desc}  {elapsed}", file=self.out, leave=True)
                self._bar_is_activity = True
            else:
                self.line(f"{label} ...")

    def end_activity(self) -> None:
        """The current activity is over: its bar stays with its time (a plain line without a TTY)."""
        with self._lock:
            self._finish_bar()
            if self._activity is not None and not self.tty:
                self.line(f"{self._label(self._activity)} done in {time.monotonic() - self._activity_t0:.0f} s")
            self._activity = None

    def track(self, rows: Iterable[Any], total: int, desc: str, unit: str = "prompt") -> Iterator[Any]:
        """Yield ``rows``, showing done/total, tokens/s (rows with ``num_tokens``), elapsed and ETA.

        Inside a stage the label is the stage's and the part of ``desc`` after its ``name: `` prefix
        (``round 0 eval: judge``, ``base_answers: answers``)."""
        part = desc.split(": ", 1)[-1]
        label = f"{self._label(self._activity)}: {part}" if self._activity else desc
        with self._lock:
            if self._bar is not None:
                self._finish_bar(keep=not self._bar_is_activity)
            if self.tty:
                self._bar = tqdm(total=total, desc=label, unit=unit, file=self.out, leave=True, dynamic_ncols=True)
                self._bar_is_activity = False
        t0, last_line, done, tokens = time.monotonic(), time.monotonic(), 0, 0
        for row in rows:
            done += 1
            counts = row.get("num_tokens") if isinstance(row, dict) else None
            tokens += sum(int(n) for n in counts) if counts is not None else 0
            rate = tokens / max(time.monotonic() - t0, 1e-9) if tokens else None
            if self._bar is not None:
                self._bar.update(1)
                if rate is not None:
                    self._bar.set_postfix_str(f"{rate:.0f} tok/s", refresh=False)
            if self.heartbeat is not None:
                self.heartbeat.set(progress=desc, done=done, total=total, unit=unit, tokens_per_s=rate)
            if not self.tty and time.monotonic() - last_line >= PLAIN_EVERY_S:
                last_line = time.monotonic()
                self.line(f"{label}: {done}/{total} {unit}s{_rate(rate)}, {time.monotonic() - t0:.0f} s")
            yield row
        if self.tty:
            self._finish_bar()
        else:
            self.line(f"{label}: {done}/{total} {unit}s{_rate(rate if done else None)}, "
                      f"{time.monotonic() - t0:.0f} s")

    def round_done(self, manifest: dict[str, Any]) -> None:
        """A committed round: its row of the table (the header before the first). Without a TTY the round
        loop's own one-line INFO event stands for it, and the table comes with the summary."""
        from prefloop.app.watch.report import format_table

        with self._lock:
            self.end_activity()
            if self.heartbeat is not None:
                self.heartbeat.update(last_round=manifest.get("round"), stage=None, done=None, total=None)
            if not self.tty and not self.verbose:
                return
            lines = format_table([manifest]).splitlines()
            if not self._table_shown:
                self.line("")
                for head in lines[:2]:
                    self.line(head, stamp=False)
                self._table_shown = True
            for row in lines[2:]:
                self.line(row, stamp=False)

    def summary(self, rows: list[dict[str, Any]], report_dir: Any, elapsed_s: float | None = None) -> None:
        """The closing lines: the table if no round was shown yet, where the report and logs are."""
        if rows and not self._table_shown:
            from prefloop.app.watch.report import format_table

            self.line("\n" + format_table(rows), stamp=False)
            self._table_shown = True
        took = f" in {elapsed_s:.0f} s" if elapsed_s is not None else ""
        self.line(f"\ndone: {len(rows)} round(s){took}")
        self.line(f"report: {report_dir}/report.md  ·  {report_dir}/report.html")
        if self.log_path is not None:
            self.line(f"logs:   {self.log_path}" + (f"  ·  Ray workers: {self.ray_logs}" if self.ray_logs else ""))

    def error(self, err: BaseException) -> None:
        """An error, in full, then where the logs are."""
        self._finish_bar()
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        sys.stderr.write(text)
        if self.log_path is not None:
            sys.stderr.write(f"prefloop: failed; the driver log is {self.log_path}\n")
        if self.ray_logs:
            sys.stderr.write(f"prefloop: Ray workers' logs (vLLM, scorers, trainers): {self.ray_logs}\n")
        sys.stderr.flush()

    # -- output --------------------------------------------------------------------------------------------
    def line(self, text: str, stamp: bool = True) -> None:
        """One line (or a few) of output; without a TTY each line starts with the time (``stamp``)."""
        with tqdm.external_write_mode(file=self.out):
            if self.tty or not stamp:
                self.out.write(text + "\n")
            else:
                self.out.write("\n".join(f"{time.strftime('%H:%M:%S')} {t}" if t else t
                                         for t in text.strip("\n").split("\n")) + "\n")
            self.out.flush()

    def _label(self, name: str) -> str:
        return f"round {self.round} {name}" if self.round is not None else name

    def _finish_bar(self, keep: bool = True) -> None:
        with self._lock:
            bar, self._bar = self._bar, None
            if bar is not None:
                bar.leave = keep
                bar.close()

    def _start_ticker(self) -> None:
        if self._ticker is None and (self.tty or not self.verbose):
            self._ticker = threading.Thread(target=self._tick, name="prefloop-console", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        """Keep the elapsed time of a stage without rows (training, a swap) moving; in quiet mode, catch the
        console handlers a library adds late (Ray Serve when it starts, Ray Data on its first dataset)."""
        while True:
            time.sleep(1.0)
            if not self.verbose:
                route_library_logs()
            bar = self._bar
            if bar is not None:
                try:
                    bar.refresh()
                except Exception:  # closed between the read and the refresh
                    pass


def _rate(rate: float | None) -> str:
    return f", {rate:.0f} tok/s" if rate else ""


_active = Console()


def get() -> Console:
    """This process's console (a verbose one unless the CLI installed another)."""
    return _active


def install(verbose: bool, out: Any = None, tty: bool | None = None) -> Console:
    """Make a console this process's (the CLI: quiet unless ``verbose``) and set up its logging."""
    global _active
    _active = Console(verbose=verbose, out=out, tty=tty)
    _active.install_logging()
    return _active


def track(rows: Iterable[Any], total: int, desc: str, unit: str = "prompt") -> Iterator[Any]:
    """Progress over ``rows`` on this process's console (what ``run_steps`` calls)."""
    return _active.track(rows, total, desc, unit)

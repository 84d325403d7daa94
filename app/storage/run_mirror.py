"""Run directories on shared storage: ``run_dir: s3://bucket/runs/x`` (or ``gs://``, ``hdfs://``, ``file://``).

Object stores have no atomic rename, so a remote run directory is a mirror of a local working copy:
- prefloop works in a local folder (``$PREFLOOP_RUNS_CACHE`` or ``~/.cache/prefloop/runs/<scheme>/<path>``)
  with the usual atomic stage commits;
- each committed stage is uploaded file by file with its ``manifest.json`` LAST: on the remote side a stage
  is committed exactly when its manifest exists, so a crash mid-upload leaves a stage that counts as not done
  (it is redone, and the half-upload overwritten);
- a driver, once it holds the run's lock (``app/storage/runlock.py``), pulls the committed stages it needs:
  everything except the weights of rounds that later rounds superseded, which can be large (their metrics files
  come, into ``SUPERSEDED/``, so ``metrics.jsonl`` is rebuilt whole); then it uploads the committed local stages
  the remote lacks (an upload that failed after its local commit). A reader (``prefloop serve``) only pulls;
- every upload is retried with exponential backoff (``Mirror.retries``, ``Mirror.backoff_s``);
- the tracking folders ``mlruns/``, ``tensorboard/`` and ``logs/`` are mirrored too (changed files, at every
  commit and top-level save), so a run resumed elsewhere continues them.
Files go through ``pyarrow.fs`` (S3, GCS, HDFS and local filesystems; credentials from the environment).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from prefloop.core.retry import backoff_s, retry

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MIRRORED_DIRS = ("mlruns", "tensorboard", "logs")
NOT_MIRRORED = (".prefloop-lock", ".prefloop-lock.guard")
SUPERSEDED = ".superseded"  # local only: the metrics files of superseded round models, whose weights stay remote
MODEL_METRICS = ("train_metrics.jsonl", "remax_metrics.jsonl")  # the run lock lives remotely as its own lease object (app/storage/runlock.py)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_uri(run_dir: str | os.PathLike) -> bool:
    return bool(_SCHEME.match(str(run_dir)))


def local_cache(uri: str) -> Path:
    """The local working copy of a remote run directory."""
    base = Path(os.environ.get("PREFLOOP_RUNS_CACHE", Path.home() / ".cache" / "prefloop" / "runs"))
    scheme, rest = uri.split("://", 1)
    safe = re.sub(r"[^A-Za-z0-9._/-]", "_", rest).strip("/")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:8]  # two URIs never share a working copy
    return base.expanduser() / scheme / f"{safe}-{digest}"


class Mirror:
    """Upload and download between a local run directory and its URI."""

    retries = 4  # attempts per upload
    backoff_s = 1.0  # first wait; doubled after each failed attempt

    def __init__(self, uri: str, local: Path):
        from pyarrow import fs

        self.uri, self.local = uri.rstrip("/"), local
        self.fs, self.base = fs.FileSystem.from_uri(self.uri)  # nothing is read or written before the lock
        self._sent: dict[str, tuple[int, int]] = {}  # mirrored-folder file -> (size, mtime_ns) uploaded

    def _retry(self, what: str, action: Callable[[], None]) -> None:
        """Run an upload, retrying transient storage errors with backoff; the last error propagates."""
        def before_retry(attempt: int, err: BaseException) -> None:
            wait = backoff_s(attempt, self.backoff_s)
            log.warning("upload of %s failed (%s); retry %d/%d in %.1f s", what, err, attempt, self.retries - 1, wait)
            time.sleep(wait)

        retry(action, attempts=self.retries, transient=(OSError,), before_retry=before_retry,
              give_up=lambda n, err: OSError(f"upload of {what} to {self.uri} failed {n} times: {err}"))

    # -- upload
    def _put(self, src: Path, rel: str) -> None:
        dest = f"{self.base}/{rel}"
        self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        with open(src, "rb") as fh, self.fs.open_output_stream(dest) as out:
            while chunk := fh.read(8 << 20):
                out.write(chunk)

    def push_stage(self, folder: Path) -> None:
        """Upload a committed stage folder; its manifest goes last (the remote commit marker). Retried whole."""
        self._retry(folder.relative_to(self.local).as_posix(), lambda: self._push_stage(folder))

    def _push_stage(self, folder: Path) -> None:
        rel = folder.relative_to(self.local).as_posix()
        self.fs.delete_dir_contents(f"{self.base}/{rel}", missing_dir_ok=True)  # a half-upload from a crash
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
        for path in files + [folder / MANIFEST]:
            self._put(path, path.relative_to(self.local).as_posix())
        log.info("uploaded %s to %s (%d files)", rel, self.uri, len(files) + 1)

    def push_top(self) -> None:
        """Upload the small top-level files (recipe, report, metrics) and the mirrored folders' changed files."""
        for path in sorted(self.local.iterdir()):
            if path.is_file() and not path.name.endswith(".tmp") and path.name not in NOT_MIRRORED:
                self._retry(path.name, lambda p=path: self._put(p, p.name))
        for name in MIRRORED_DIRS:
            for path in sorted(p for p in (self.local / name).rglob("*") if p.is_file()):
                rel, st = path.relative_to(self.local).as_posix(), path.stat()
                if self._sent.get(rel) != (st.st_size, st.st_mtime_ns):
                    self._retry(rel, lambda p=path, r=rel: self._put(p, r))
                    self._sent[rel] = (st.st_size, st.st_mtime_ns)

    def push_missing(self) -> list[str]:
        """Upload the committed local stages whose remote copy has no manifest (an upload that failed after
        the local commit, or a crash in between); returns them."""
        from pyarrow import fs

        done = set(self._committed_stages())
        missing = sorted(m.parent.relative_to(self.local).as_posix() for m in self.local.glob(f"round_*/*/{MANIFEST}")
                         if ".partial-" not in m.parent.name)
        missing = [s for s in missing if s not in done]
        for stage in missing:
            log.warning("%s is committed locally but not on %s: uploading it now", stage, self.uri)
            self.push_stage(self.local / stage)
        if missing or self.fs.get_file_info(f"{self.base}/recipe.yaml").type == fs.FileType.NotFound:
            self.push_top()
        return missing

    def push_file(self, path: Path) -> None:
        """Upload one top-level file (the heartbeat)."""
        self._put(path, path.name)

    def delete(self, rel: str) -> None:
        """Remove a folder under the remote run directory (a committed round's Ray Train checkpoints)."""
        self.fs.delete_dir_contents(f"{self.base}/{rel}", missing_dir_ok=True)
        self.fs.delete_dir(f"{self.base}/{rel}")

    # -- download
    def _committed_stages(self) -> list[str]:
        from pyarrow import fs

        found = self.fs.get_file_info(fs.FileSelector(self.base, recursive=False, allow_not_found=True))
        stages = []
        for rnd in (i for i in found if i.type == fs.FileType.Directory and i.base_name.startswith("round_")):
            for st in self.fs.get_file_info(fs.FileSelector(rnd.path)):
                if st.type == fs.FileType.Directory and ".partial-" not in st.base_name and \
                        self.fs.get_file_info(f"{st.path}/{MANIFEST}").type == fs.FileType.File:
                    stages.append(f"{rnd.base_name}/{st.base_name}")
        return stages

    def pull(self) -> None:
        """Download the top-level files and the committed stages that are not local yet (see module doc)."""
        from pyarrow import fs

        stages = self._committed_stages()
        models = sorted((s for s in stages if s.endswith("/model")), key=lambda s: int(s.split("/")[0][6:]))
        skip = set(models[:-1])  # superseded models: only the latest is needed to resume or serve
        for info in self.fs.get_file_info(fs.FileSelector(self.base, recursive=False, allow_not_found=True)):
            if info.type == fs.FileType.File and info.base_name not in NOT_MIRRORED:
                self._get(info.path, self.local / info.base_name)
            elif info.type == fs.FileType.Directory and info.base_name in MIRRORED_DIRS:
                self._pull_folder(info.path, self.local / info.base_name)
        for stage in stages:
            target = self.local / stage
            if stage in skip:
                self._pull_metrics(stage)
            elif not (target / MANIFEST).is_file():
                self._pull_stage(stage, target)

    def _pull_metrics(self, stage: str) -> None:
        """A superseded model's metrics files and manifest, not its weights, into ``SUPERSEDED/<stage>``."""
        from pyarrow import fs

        for name in MODEL_METRICS + (MANIFEST,):
            src = f"{self.base}/{stage}/{name}"
            if self.fs.get_file_info(src).type == fs.FileType.File:
                self._get(src, self.local / SUPERSEDED / stage / name)

    def _pull_stage(self, stage: str, target: Path) -> None:
        from pyarrow import fs

        scratch = target.parent / f"{target.name}.partial-{os.getpid()}"
        src = f"{self.base}/{stage}"
        for info in self.fs.get_file_info(fs.FileSelector(src, recursive=True)):
            if info.type == fs.FileType.File:
                self._get(info.path, scratch / info.path[len(src) + 1:])
        os.replace(scratch, target)  # local commit, as for a stage written here
        log.info("pulled %s from %s", stage, self.uri)

    def _pull_folder(self, src: str, target: Path) -> None:
        """A mirrored folder (tracking files): download what is missing or of another size locally."""
        from pyarrow import fs

        for info in self.fs.get_file_info(fs.FileSelector(src, recursive=True)):
            dest = target / info.path[len(src) + 1:]
            if info.type != fs.FileType.File:
                continue
            if not dest.is_file() or dest.stat().st_size != info.size:
                self._get(info.path, dest)
            st = dest.stat()  # the remote has this version: no need to upload it again
            self._sent[dest.relative_to(self.local).as_posix()] = (st.st_size, st.st_mtime_ns)

    def _get(self, path: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".download")
        with self.fs.open_input_stream(path) as src, open(tmp, "wb") as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)
        os.replace(tmp, dest)


def open_mirror(run_dir: Any) -> tuple[Path, Mirror | None]:
    """(local root, mirror or None) for a run_dir string: a URI gets a local working copy, not yet synced
    (``Mirror.pull`` / ``push_missing``: a driver calls them once it holds the run's lock)."""
    if not is_uri(run_dir):
        return Path(run_dir).expanduser().resolve(), None
    local = local_cache(str(run_dir))
    local.mkdir(parents=True, exist_ok=True)
    return local, Mirror(str(run_dir), local)

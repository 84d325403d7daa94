"""The run directory: one folder per round, one folder per stage, each committed atomically.

    RUN_DIR/
      recipe.yaml                 the resolved recipe of the run
      round_0/
        rollout/                  present only once the stage finished (see below)
          manifest.json           counts and timings
          candidates.parquet ...
        model/ ...

A stage writes into ``<stage>.partial-<pid>/`` and, when everything is written and fsynced, renames it to
``<stage>/`` (an atomic rename on one filesystem). So a crash mid-stage leaves only a ``.partial`` folder,
which is ignored and cleaned on the next attempt (only a dead process's: see ``remove_dead_partials``), and
the last good round is never half-overwritten. One driver at a time holds the run (``app/storage/runlock.py``).
Resume = same run directory: a stage whose folder exists is skipped.

``run_dir`` may also be a URI (``s3://``, ``gs://``, ``file://`` ...): the run is then worked on in a local copy
and every commit is uploaded, manifest last (``app/storage/run_mirror.py``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from prefloop.app.storage.run_mirror import MODEL_METRICS, SUPERSEDED, open_mirror

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"

# The stage folders of a round: the one place their names are written.
ROLLOUT = "rollout"  # samples, scores, pairs and KTO examples
MODEL = "model"  # the round's trained model (an HF directory) and its manifest
EVAL = "eval"  # the held-out answers judged against the base model's
BASE_ANSWERS = "base_answers"  # round_0 only: the base model's held-out answers, generated once per run
LEADERBOARD = "leaderboard"  # lm_eval's results on the round's model (eval.leaderboard), read into its eval manifest
TRAIN_WORK, REMAX_WORK = "train", "remax"  # a running round's scratch (checkpoints); removed once committed

# Files at the top of a run directory.
RECIPE_FILE = "recipe.yaml"  # the resolved recipe
METRICS_FILE = "metrics.jsonl"  # per-step training metrics of every round
# Manifest keys renamed since runs were first written, old -> new; a manifest is read through upgrade_manifest, so
# an old run resumes, reports and serves with the keys the code uses now.
RENAMED_KEYS = {"judge_win_rate": "scorer_win_rate", "judge_win_rate_stderr": "scorer_win_rate_stderr"}
ROUNDS_FILE = "rounds.jsonl"  # one line per committed round (its eval manifest)
REPORT_MD, REPORT_PNG = "report.md", "report.png"


class RunDir:
    """Paths and atomic commits inside one run directory."""

    def __init__(self, root: str | Path):
        self.uri = str(root)
        self.root, self.mirror = open_mirror(root)

    def sync(self) -> None:
        """A URI run: pull the committed stages and upload what the remote lacks. Only under the run's lock
        (``app/storage/runlock.py``'s ``hold_run`` calls it once the lock is held)."""
        if self.mirror is not None:
            self.mirror.pull()
            self.mirror.push_missing()

    def pull(self) -> None:
        """A URI run: download the committed stages, writing nothing remote (a reader such as ``serve``)."""
        if self.mirror is not None:
            self.mirror.pull()

    def guard(self) -> None:
        """Before a commit: stop (``RunLockLostError``) if this process held the run's lock and lost it."""
        from prefloop.app.storage.runlock import check_held

        check_held(self.root)

    def round_dir(self, round_idx: int) -> Path:
        return self.root / f"round_{round_idx}"

    def stage_dir(self, round_idx: int, stage: str) -> Path:
        return self.round_dir(round_idx) / stage

    def is_committed(self, round_idx: int, stage: str) -> bool:
        return (self.stage_dir(round_idx, stage) / MANIFEST).is_file()

    def manifest(self, round_idx: int, stage: str) -> dict[str, Any]:
        return upgrade_manifest(json.loads((self.stage_dir(round_idx, stage) / MANIFEST).read_text()))

    def rebuild_metrics(self) -> None:
        """``RUN_DIR/metrics.jsonl``: every committed round's per-step metrics, one JSON object a line.

        Derived from the model stages (``train_metrics.jsonl`` / ``remax_metrics.jsonl``, written inside the stage
        before its commit) and rewritten whole, so it is idempotent: a kill between a commit and this call loses
        nothing, the next call (at the latest the loop's next start) writes the rows. A URI run's superseded
        models are not pulled, only their metrics files (into ``SUPERSEDED/``): those count the same."""
        lines = []
        rounds = sorted({int(p.name[6:]) for base in (self.root, self.root / SUPERSEDED)
                         for p in base.glob("round_*") if p.name[6:].isdigit()})
        for r in rounds:
            model = next((m for m in (self.stage_dir(r, MODEL), self.root / SUPERSEDED / f"round_{r}" / MODEL)
                          if (m / MANIFEST).is_file()), None)
            if model is None:
                continue
            for name, extra in zip(MODEL_METRICS, ({}, {"method": "remax"})):
                if (model / name).is_file():
                    for line in (model / name).read_text(encoding="utf-8").splitlines():
                        lines.append(json.dumps({"stage": "train", "round": r, **extra, **json.loads(line)}) + "\n")
        if lines or (self.root / METRICS_FILE).is_file():
            self.save_text(METRICS_FILE, "".join(lines))

    @contextmanager
    def commit(self, round_idx: int, stage: str) -> Iterator[Path]:
        """Yield a scratch folder; on normal exit it becomes the committed stage folder."""
        final = self.stage_dir(round_idx, stage)
        if final.exists():
            raise FileExistsError(f"{final}: stage already committed")
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_partials(final.parent, stage)
        scratch = final.parent / f"{stage}.partial-{os.getpid()}"
        scratch.mkdir()
        try:
            yield scratch
            if not (scratch / MANIFEST).is_file():
                raise RuntimeError(f"stage {stage} wrote no {MANIFEST}")
            _fsync_tree(scratch)
            self.guard()  # a driver that lost the run's lock commits nothing
            os.replace(scratch, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        if self.mirror is not None:
            self.guard()
            self.mirror.push_stage(final)
            self.mirror.push_top()

    def train_storage(self, round_idx: int, name: str) -> str:
        """Ray Train's ``storage_path`` for a round's checkpoints: on the run's URI when it has one (multi-node
        workers must all reach it, and a driver restarted elsewhere resumes from it), else the local round."""
        if self.mirror is not None:
            return f"{self.mirror.uri}/round_{round_idx}/{name}"
        return str(self.round_dir(round_idx) / name)

    def drop_train_storage(self, round_idx: int, name: str) -> None:
        """Remove a committed round's checkpoints (local scratch and, for a URI run, the remote copy)."""
        shutil.rmtree(self.round_dir(round_idx) / name, ignore_errors=True)
        if self.mirror is not None:
            self.mirror.delete(f"round_{round_idx}/{name}")

    def save_text(self, name: str, text: str) -> Path:
        """Write a small file at the top of the run directory atomically."""
        self.guard()
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        if self.mirror is not None:
            self.mirror.push_top()
        return path


def remove_dead_partials(parent: Path, stage: str) -> None:
    """Remove ``<stage>.partial-<pid>`` folders of processes that are gone (or of this one, from an earlier
    attempt); a live process's (say ``prefloop serve`` pulling the stage) is left alone."""
    from prefloop.app.storage.runlock import pid_alive

    for stale in parent.glob(f"{stage}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
            log.warning("leaving %s: process %s is still running", stale, pid)
            continue
        log.warning("removing unfinished %s from an earlier attempt", stale)
        shutil.rmtree(stale, ignore_errors=True)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def upgrade_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest with the keys ``RENAMED_KEYS`` gives under their current names (the file is not rewritten)."""
    return {RENAMED_KEYS.get(k, k) if RENAMED_KEYS.get(k) not in manifest else k: v for k, v in manifest.items()}

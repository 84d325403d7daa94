"""A round's model stage: how the trained model is committed, for every method's driver.

``commit_model``: the final Ray Train checkpoint's model, its per-step metrics, the rejected input rows and a
manifest, committed atomically as ``round_R/model``; the metrics also go to ``RUN_DIR/metrics.jsonl``. Used by
``app/rounds/train.py`` (DPO/KTO/SFT/cSFT) and ``app/rounds/remax.py`` (ReMax).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

from prefloop.app.storage.model_files import stamp_model
from prefloop.app.storage.rundir import MODEL, RunDir, write_manifest
from prefloop.app.storage.tables import write_jsonl

log = logging.getLogger(__name__)


def commit_model(run: RunDir, round_idx: int, checkpoint: Any, *, chat_template: str,
                 rejected: list[dict[str, Any]], metrics_file: str, manifest: dict[str, Any],
                 summarize: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Commit ``checkpoint``'s model (``model/``, ``state.json``, ``metrics.jsonl``, as the workers write them)
    as the round's model stage, its tokenizer stamped with the ``chat_template`` it was trained in (and a cSFT
    model's control token, ``app/storage/model_files.py``). ``manifest`` gets ``stage``, ``round``, ``steps`` and the first and final
    metrics added, and ``summarize(history)``'s keys where given; returns that manifest."""
    with checkpoint.as_directory() as ckpt:
        ckpt = Path(ckpt)
        state = json.loads((ckpt / "state.json").read_text())
        history = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
        manifest = {"stage": MODEL, "round": round_idx, **manifest,
                    "steps": {**manifest.get("steps", {}), "done": state["step"],
                              "restored_from": state["restored_from"],
                              "optimizer_reset_at": state.get("optimizer_reset_at", []),
                              "started_over": state.get("started_over")},
                    "first_metrics": history[0] if history else {},
                    "final_metrics": history[-1] if history else {},
                    "tokens_per_s": mean_of(history, "tokens_per_s"),
                    **(summarize(history) if summarize else {})}
        with run.commit(round_idx, MODEL) as out:
            shutil.copytree(ckpt / "model", out, dirs_exist_ok=True)
            manifest["model_info"] = stamp_model(out, chat_template, manifest["method"])
            write_jsonl(out / "rejected_inputs.jsonl", rejected)
            write_jsonl(out / metrics_file, history)
            if (ckpt / "trained_examples.jsonl").is_file():  # example ids of each step, all workers
                shutil.copy(ckpt / "trained_examples.jsonl", out / "trained_examples.jsonl")
            write_manifest(out, manifest)
    run.rebuild_metrics()
    warning = optimizer_reset_warning(round_idx, manifest["steps"])
    if warning:
        log.warning(warning)
    return manifest


def optimizer_reset_warning(round_idx: int, steps: dict[str, Any]) -> str | None:
    """What the driver says when the round's training resumed without its optimizer state (an FSDP
    checkpoint): the workers' log says it too, but the driver's console is what a user reads."""
    if not steps.get("optimizer_reset_at"):
        return None
    return (f"round {round_idx}: training resumed WITHOUT optimizer state at step(s) {steps['optimizer_reset_at']}: "
            "AdamW's moments and the schedule restarted there (FSDP checkpoints do not hold the sharded optimizer "
            "state); the model manifest records steps.optimizer_reset_at")


def mean_of(history: list[dict[str, Any]], key: str) -> float | None:
    """The mean of ``key`` over the steps that report it (None when none does)."""
    values = [float(m[key]) for m in history if isinstance(m.get(key), (int, float))]
    return sum(values) / len(values) if values else None

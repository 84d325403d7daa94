"""A training round's Ray Train checkpoints: what one holds, the identity a resume must match, a strict restore.

A checkpoint (rank 0 writes it) holds the trainable weights (``trainable.pt``), the optimizer and scheduler
(``optim.pt``; not under FSDP, whose optimizer state is sharded), the worker state (``state.json``: step,
epoch, micro-batches done in the epoch, the steps resumed from, and the IDENTITY), the metrics so far and the
example ids of every step.

The identity says what the position (``micro_in_epoch``) counts: a fingerprint of the examples (every
example's id and content, in id order) and the settings that decide the order and the steps (seed, world
size, method, micro-batch size, gradient accumulation, epochs, total steps). A resume whose identity differs
(``--allow-recipe-change``, a changed ``train.data``, another worker count) would skip the wrong examples, so
the worker starts the round's training over from step 0 instead, and says so in the log and in the state
(``started_over``), which the round's manifest carries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CONFIG_KEYS = ("method", "micro_batch_size", "grad_accum", "epochs")  # TrainConfig fields that decide order/steps


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def checkpoint_identity(rows_by_id: dict[int, dict[str, Any]], config: Any, world: int) -> dict[str, Any]:
    """The examples' fingerprint and the order-deciding settings of this training (``config``: a
    ``TrainWorkerConfig``)."""
    digest = hashlib.sha256()
    for i in sorted(rows_by_id):
        row = rows_by_id[i]
        digest.update(json.dumps([int(i), [[k, row[k]] for k in sorted(row)]], default=_plain).encode())
        digest.update(b"\n")
    settings = {"seed": config.seed, "world": world, "total_steps": config.total_steps,
                **{k: getattr(config.train, k) for k in CONFIG_KEYS}}
    return {"examples": digest.hexdigest()[:24], "num_examples": len(rows_by_id), "settings": settings}


def identity_difference(saved: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """Why a checkpoint of identity ``saved`` cannot be resumed by a training of identity ``now`` (None: it can)."""
    if not saved:
        return "the checkpoint records no identity of its examples and settings"
    why = []
    if saved.get("examples") != now["examples"]:
        why.append(f"other examples ({saved.get('num_examples')} examples, fingerprint {saved.get('examples')}; "
                   f"now {now['num_examples']}, {now['examples']})")
    old = saved.get("settings") or {}
    why += [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in now["settings"].items() if old.get(k) != v]
    return "; ".join(why) or None


def load_trainable(model: Any, weights: dict[str, torch.Tensor]) -> None:
    """Load checkpointed weights into ``model``: every trainable parameter must be there and nothing unknown."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(weights))
    result = model.load_state_dict(weights, strict=False)
    if missing or result.unexpected_keys:
        raise RuntimeError(f"checkpoint does not fit the model: trainable weights missing {missing[:5]} "
                           f"({len(missing)} in all), unexpected {list(result.unexpected_keys)[:5]}")


@dataclass
class Saved:
    """What a checkpoint folder holds."""

    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    history: list[dict[str, Any]]
    trained: list[dict[str, Any]] = field(default_factory=list)
    optim: dict[str, Any] | None = None


def write_state(folder: Path, saved: Saved) -> None:
    torch.save(saved.weights, folder / "trainable.pt")
    if saved.optim is not None:
        torch.save(saved.optim, folder / "optim.pt")
    (folder / "state.json").write_text(json.dumps(saved.state))
    with open(folder / "metrics.jsonl", "w") as fh:
        fh.writelines(json.dumps(m) + "\n" for m in saved.history)
    with open(folder / "trained_examples.jsonl", "w") as fh:
        fh.writelines(json.dumps(m) + "\n" for m in saved.trained)


def read_state(folder: Path) -> Saved:
    trained = folder / "trained_examples.jsonl"
    optim = folder / "optim.pt"
    return Saved(weights=torch.load(folder / "trainable.pt", map_location="cpu"),
                 state=json.loads((folder / "state.json").read_text()),
                 history=[json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()],
                 trained=[json.loads(line) for line in trained.read_text().splitlines()] if trained.is_file() else [],
                 optim=torch.load(optim, map_location="cpu") if optim.exists() else None)

"""Small helpers shared by the actor shells: input checks, timing columns, object-array columns."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def check_model_dir(path: str, what: str) -> None:
    """Fail early, naming the path, instead of deep inside vLLM or transformers."""
    if not Path(path, "config.json").is_file():
        raise FileNotFoundError(f"{what} {path!r}: not a Hugging Face model directory (no config.json)")


def timed(column: str) -> Callable:
    """Decorate a batch ``__call__`` to time it: adds ``<column>`` (each row's share of the call's seconds)
    and ``<column>_t0`` (wall-clock start of the call, for throughput measured after start-up)."""
    def wrap(call: Callable) -> Callable:
        @functools.wraps(call)
        def inner(self: Any, batch: dict[str, Any]) -> Any:
            t0, started = time.time(), time.perf_counter()
            out = call(self, batch)
            rows = len(out["prompt_id"])
            out[column] = np.full(rows, (time.perf_counter() - started) / max(rows, 1))
            out[f"{column}_t0"] = np.full(rows, t0)
            return to_table(out)
        return inner
    return wrap


def to_table(batch: dict[str, Any]) -> Any:
    """A batch of columns as a pyarrow Table, so list-valued columns get proper Arrow list types
    (Ray Data would otherwise fall back to pickling object arrays)."""
    import pyarrow as pa

    def as_list(values: Any) -> list:
        if isinstance(values, np.ndarray) and values.dtype != object:
            return values.tolist()
        return [v.tolist() if isinstance(v, np.ndarray) else v for v in values]

    return pa.Table.from_pydict({name: as_list(values) for name, values in batch.items()})


def object_column(values: list) -> np.ndarray:
    """A 1-d object array of lists (numpy would otherwise try to build a 2-d array)."""
    arr = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        arr[i] = value
    return arr


_RELOADABLE_KEYS = {"transformers_version", "dtype", "torch_dtype", "_name_or_path", "use_cache"}


def reloadable_in_place(old_dir: str, new_dir: str) -> bool:
    """Whether ``new_dir``'s weights can be loaded into the engine built for ``old_dir``.

    The configs must match (up to bookkeeping keys), and the output embeddings must be untied: with
    ``tie_word_embeddings`` vLLM's in-place reload leaves the LM head on the old weights ("ParallelLMHead:
    Failed to load weights"), so the model answers with a mix of old and new weights. A missing key counts as
    tied. Mistral-7B and most large models are untied; small ones often are not.
    """
    if not Path(old_dir, "config.json").is_file():  # the old folder is gone (e.g. a removed ReMax push)
        return False

    def shapes(d: str) -> dict[str, Any]:
        cfg = json.loads(Path(d, "config.json").read_text(encoding="utf-8"))
        return {k: v for k, v in cfg.items() if k not in _RELOADABLE_KEYS}

    new = shapes(new_dir)
    return shapes(old_dir) == new and new.get("tie_word_embeddings") is False

"""Small helpers shared by the actor shells: input checks, timing columns, object-array columns, bounded waits."""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import numpy as np


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


def ray_get(refs: Any, timeout_s: float, what: str) -> Any:
    """``ray.get`` with a deadline: a TimeoutError naming ``what`` after ``timeout_s``, and a dead actor as a
    RuntimeError naming ``what`` (its RayActorError chained), never a silent hang."""
    import ray

    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"{what}: no answer in {timeout_s:.0f} s") from None
    except ray.exceptions.RayActorError as err:
        raise ActorDied(f"{what}: the actor died ({type(err).__name__})") from err


class ActorDied(RuntimeError):
    """The actor behind a remote call died; the Ray error is the ``__cause__``."""


def wait_restarted(name: str, ping: Callable[[Any], Any], timeout_s: float, what: str) -> Any:
    """The named actor once Ray has restarted it and ``ping(handle)`` (an object ref) answers: a model load,
    seconds to minutes; a TimeoutError naming it after ``timeout_s``."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            handle = ray.get_actor(name)
            ray.get(ping(handle), timeout=max(1.0, deadline - time.monotonic()))
            return handle
        except (ValueError, ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} {name} did not come back in {timeout_s:.0f} s") from None
            time.sleep(1.0)


def actor_name(prefix: str, *parts: object) -> str:
    """A Ray actor name unique to this start: ``prefix-parts...-<ms clock>`` (a rerun never meets the name of a
    previous run's actor that Ray has not yet cleaned up)."""
    return "-".join([prefix, *map(str, parts), str(int(time.time() * 1000) % 10**9)])

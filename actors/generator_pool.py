"""Long-lived vLLM generator actors that survive across rounds and take new weights in place.

A Ray Data actor pool lives only as long as one dataset execution, so a round loop built on it alone would
rebuild every vLLM engine every round (~15-30 s each here, minutes for a 7B model on a GPU). Instead the loop
starts ``GeneratorPool`` once: named Ray actors around ``VLLMGenerator``. Each round's Ray Data pipeline
reaches them through ``PooledGenerator``, a zero-CPU forwarding stage, and between rounds
``GeneratorPool.reload`` swaps the new round's weights into every engine (``reload_weights``, no restart).

Every remote wait here has a timeout; a dead generator actor fails the stage with its name in the message.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

from prefloop.actors.common import ray_get
from prefloop.actors.generator import VLLMGenerator
from prefloop.core.sampling import SampleSpec

log = logging.getLogger(__name__)


class GeneratorActor(VLLMGenerator):
    """``VLLMGenerator`` as a named actor: batch calls, in-place reloads, and a per-call sampling override."""

    def generate_batch(self, batch: dict[str, Any], spec: dict[str, Any] | None = None) -> Any:
        if spec is None:
            return self(batch)
        saved, self.spec = self.spec, SampleSpec(**spec)
        try:
            return self(batch)
        finally:
            self.spec = saved

    def current_model(self) -> str:
        return self.model


class GeneratorPool:
    """``size`` named generator actors, started once, reloaded in place each round."""

    def __init__(self, names: list[str], handles: list[Any], model: str, timeout_s: float):
        self.names, self.handles, self.model, self.timeout_s = names, handles, model, timeout_s

    @classmethod
    def start(cls, model: str, spec: SampleSpec, engine_kwargs: dict[str, Any], size: int, num_cpus: float,
              num_gpus: float, timeout_s: float, prefix: str = "prefloop-generator") -> "GeneratorPool":
        import ray

        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=1)(GeneratorActor)
        stamp = f"{int(time.time() * 1000) % 10**9}"
        names = [f"{prefix}-{stamp}-{i}" for i in range(size)]
        handles = [remote.options(name=n).remote(model=model, spec=spec, **engine_kwargs) for n in names]
        pool = cls(names, handles, model, timeout_s)
        started = time.perf_counter()
        pool._wait([h.current_model.remote() for h in handles], "start")
        log.info("%d generator actor(s) up in %.1f s", size, time.perf_counter() - started)
        return pool

    def _wait(self, refs: list[Any], what: str) -> list[Any]:
        return ray_get(refs, self.timeout_s, f"generator pool {self.names}: {what}")

    def reload(self, model_dir: str) -> float:
        """Swap ``model_dir``'s weights into every engine; returns the slowest actor's seconds."""
        seconds = self._wait([h.reload_weights.remote(model_dir) for h in self.handles], f"reload {model_dir}")
        self.model = model_dir
        return max(seconds)

    def shutdown(self) -> None:
        import ray

        for h in self.handles:
            ray.kill(h)


class PooledGenerator:
    """The Ray Data stage in front of a ``GeneratorPool``: forwards each batch to the next named actor."""

    def __init__(self, names: list[str], timeout_s: float, spec: dict[str, Any] | None = None):
        import ray

        self.names, self.timeout_s, self.spec = names, timeout_s, spec
        self.handles = [ray.get_actor(n) for n in names]
        self.turn = itertools.cycle(range(len(names)))

    def __call__(self, batch: dict[str, Any]) -> Any:
        i = next(self.turn)
        return ray_get(self.handles[i].generate_batch.remote(batch, self.spec), self.timeout_s,
                       f"generator {self.names[i]}")

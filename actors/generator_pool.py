"""Long-lived vLLM generator actors that survive across rounds and take new weights in place.

A Ray Data actor pool lives only as long as one dataset execution, so a round loop built on it alone would
rebuild every vLLM engine every round (seconds for the tiny model, minutes for a 7B model on a GPU). Instead the loop
starts ``GeneratorPool`` once: named Ray actors around ``VLLMGenerator``. Each round's Ray Data pipeline
reaches them through ``PooledGenerator``, a zero-CPU forwarding stage, and between rounds
``GeneratorPool.reload`` swaps the new round's weights into every engine (``reload_weights``, no restart).

Every generate call names the model it must run on (``model``): an actor that holds another one (typically
one restarted by Ray after a crash, which comes back on the base model it was created with) loads it before
answering, and every returned row says which model sampled it (``sampled_from``), so the rollout can check
that all of a round's candidates came from the round's policy (``check_sampled_from``). A call that fails
because its actor died is retried once Ray has restarted the actor.

Every remote wait here has a timeout; an actor that stays dead fails the stage with its name in the message.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prefloop.actors.common import actor_name, ray_get
from prefloop.actors.forwarder import Forwarder
from prefloop.actors.generator import VLLMGenerator
from prefloop.actors.model_cache import ModelRef, model_name
from prefloop.core.sampling import SampleSpec

log = logging.getLogger(__name__)


class GeneratorActor(VLLMGenerator):
    """``VLLMGenerator`` as a named actor: batch calls, in-place reloads, and a per-call sampling override."""

    def generate_batch(self, batch: dict[str, Any], spec: dict[str, Any] | None = None,
                       model: str | ModelRef | None = None) -> Any:
        self.served_batches = getattr(self, "served_batches", 0) + 1
        if model is not None and model_name(model) != self.model:
            log.warning("generator holds %s but the call is for %s (restarted?): loading it first", self.model,
                        model_name(model))
            self.reload_weights(model)
        if spec is None:
            return self(batch)
        saved, self.spec = self.spec, SampleSpec(**spec)
        try:
            return self(batch)
        finally:
            self.spec = saved

    def current_model(self) -> str:
        return self.model

    def batches_served(self) -> int:
        """Calls answered since this actor (re)started: lets a fault test kill it mid-stage."""
        return getattr(self, "served_batches", 0)


class GeneratorPool:
    """``size`` named generator actors, started once, reloaded in place each round. ``model``: the name of
    the model they hold; ``ref``: what a (restarted) actor loads it from (``actors/model_cache.py``)."""

    def __init__(self, names: list[str], handles: list[Any], model: str | ModelRef, timeout_s: float):
        self.names, self.handles, self.timeout_s = names, handles, timeout_s
        self.model, self.ref = model_name(model), model

    @classmethod
    def start(cls, model: str | ModelRef, spec: SampleSpec, engine: dict[str, Any], size: int, num_cpus: float,
              num_gpus: float, timeout_s: float, prefix: str = "prefloop-generator",
              resources: dict[str, float] | None = None) -> "GeneratorPool":
        import ray

        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or {},
                            max_restarts=5)(GeneratorActor)
        base = actor_name(prefix)
        names = [f"{base}-{i}" for i in range(size)]
        handles = [remote.options(name=n).remote(model=model, spec=spec, engine=engine) for n in names]
        pool = cls(names, handles, model, timeout_s)
        started = time.perf_counter()
        pool._wait([h.current_model.remote() for h in handles], "start")
        log.info("%d generator actor(s) up in %.1f s", size, time.perf_counter() - started)
        return pool

    def _wait(self, refs: list[Any], what: str) -> list[Any]:
        return ray_get(refs, self.timeout_s, f"generator pool {self.names}: {what}")

    def reload(self, model: str | ModelRef) -> float:
        """Swap ``model``'s weights into every engine; returns the slowest actor's seconds."""
        seconds = self._wait([h.reload_weights.remote(model) for h in self.handles], f"reload {model_name(model)}")
        self.model, self.ref = model_name(model), model
        return max(seconds)

    def loaded_from(self) -> list[str]:
        """Each actor's local folder of the weights it holds (on its own node)."""
        return self._wait([h.loaded_from.remote() for h in self.handles], "loaded_from")

    def shutdown(self) -> None:
        import ray

        for h in self.handles:
            ray.kill(h)


class PooledGenerator(Forwarder):
    """The Ray Data stage in front of a ``GeneratorPool``: forwards each batch, with the model it must be sampled
    from, to the next named actor; a call whose actor died is sent again (to the restarted actor or another)."""

    what = "generator"

    def __init__(self, names: list[str], timeout_s: float, spec: dict[str, Any] | None = None,
                 model: str | ModelRef | None = None):
        super().__init__(names, timeout_s)
        self.spec, self.model = spec, model

    def send(self, handle: Any, batch: dict[str, Any]) -> Any:
        return handle.generate_batch.remote(batch, self.spec, self.model)

    def ping(self, handle: Any) -> Any:
        return handle.current_model.remote()



def check_sampled_from(rows: list[dict[str, Any]], policy: str, what: str) -> None:
    """Every row sampled from ``policy`` (paths compared resolved); raise naming the first offenders."""
    from pathlib import Path

    want = str(Path(policy).resolve())
    wrong = [(r["prompt_id"], r.get("sampled_from")) for r in rows
             if r.get("sampled_from") is None or str(Path(r["sampled_from"]).resolve()) != want]
    if wrong:
        raise RuntimeError(f"{what}: {len(wrong)} of {len(rows)} rows were not sampled from the round's policy "
                           f"{policy} (first: {wrong[:3]})")

"""Long-lived scorer actors, so the round loop loads PairRM (or a reward model) once, not once per stage.

Every scoring step of a round (the rollout's, the eval's training-judge and eval-judge verdicts, best-of-N
reranking) would otherwise start a Ray Data actor pool that loads the scorer again: seconds per step for the
tiny PairRM, minutes for a 13B reward model on a GPU. ``ScorerPool`` starts ``num_scorers`` named
``ScorerActor``s around any prefloop scorer class once; each stage reaches them through ``PooledScorer``, a
zero-CPU forwarder (``actors/forwarder.py``). ReMax workers call the same actors by name.

The actors keep their CPUs / GPUs for the pool's lifetime (the loop's), like the generators do.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prefloop.actors.common import actor_name, ray_get
from prefloop.actors.forwarder import Forwarder

log = logging.getLogger(__name__)


class ScorerActor:
    """A named actor holding one scorer (``PairRMScorer``, ``RewardModelScorer`` or ``FunctionScorer``)."""

    def __init__(self, cls: type, kwargs: dict[str, Any]):
        self.scorer = cls(**kwargs)

    def score_batch(self, batch: dict[str, Any]) -> Any:
        """The scorer's own output for a Ray Data batch: the batch as a table with ``scores`` (and timings)."""
        return self.scorer(batch)

    def score(self, batch: dict[str, Any]) -> list[list[float]]:
        """Only the scores, as plain lists (what ReMax workers ask for)."""
        return [list(map(float, s)) for s in self.scorer(batch).column("scores").to_pylist()]

    def ready(self) -> bool:
        return True


def start_scorer(cls: type, kwargs: dict[str, Any], num_cpus: float, num_gpus: float, name: str,
                 timeout_s: float, resources: dict[str, float] | None = None, max_restarts: int = 3) -> Any:
    """Start one named scorer actor and wait (with a timeout) until its model is loaded."""
    import ray

    handle = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or {},
                        max_restarts=max_restarts)(ScorerActor).options(name=name).remote(cls, kwargs)
    ray_get(handle.ready.remote(), timeout_s, f"scorer actor {name}: loading")
    return handle


class ScorerPool:
    """``size`` named scorer actors of one scorer configuration, started once and shut down by the owner."""

    def __init__(self, names: list[str], handles: list[Any]):
        self.names, self.handles = names, handles

    @classmethod
    def start(cls, scorer_cls: type, kwargs: dict[str, Any], size: int, num_cpus: float, num_gpus: float,
              timeout_s: float, resources: dict[str, float] | None = None,
              prefix: str = "prefloop-scorer") -> "ScorerPool":
        import ray

        base = actor_name(f"{prefix}-{scorer_cls.__name__.lower()}")
        names = [f"{base}-{i}" for i in range(size)]
        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or {},
                            max_restarts=3)(ScorerActor)
        handles = [remote.options(name=n).remote(scorer_cls, kwargs) for n in names]
        started = time.perf_counter()
        ray_get([h.ready.remote() for h in handles], timeout_s, f"scorer pool {names}: start")
        log.info("%d %s actor(s) up in %.1f s", size, scorer_cls.__name__, time.perf_counter() - started)
        return cls(names, handles)

    def shutdown(self) -> None:
        import ray

        for h in self.handles:
            ray.kill(h)


class PooledScorer(Forwarder):
    """The Ray Data stage in front of a ``ScorerPool``: each batch goes to the next named scorer actor."""

    what = "scorer"

    def send(self, handle: Any, batch: dict[str, Any]) -> Any:
        return handle.score_batch.remote(batch)

    def ping(self, handle: Any) -> Any:
        return handle.ready.remote()


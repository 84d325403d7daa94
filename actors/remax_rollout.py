"""What a ReMax training worker asks of the rest of the cluster each step: samples, greedy answers, rewards.

The generators are the round loop's long-lived ``GeneratorPool`` actors (named, found by name from inside the
Ray Train workers); the scorer is one named ``ScorerActor`` around any prefloop scorer (a scalar reward model in
its own chat template, PairRM, or a user function). Every call has a timeout. A generator that dies mid-step is
restarted by Ray (``max_restarts``) with the model it was built on, so before its work is retried it is given
the latest pushed weights again: the retried step still samples from the current policy.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from prefloop.actors.common import ActorDied, object_column, ray_get, wait_restarted
from prefloop.core.retry import retry
from prefloop.core.sampling import SampleSpec

log = logging.getLogger(__name__)


def to_batch(rows: list[dict[str, Any]], candidates: list[list[str]] | None = None) -> dict[str, Any]:
    """Rows (``prompt_id``, ``prompt``, ``messages``, ``prompt_token_ids``) as a column batch for the actors."""
    batch = {"prompt_id": np.array([r["prompt_id"] for r in rows]),
             "prompt": np.array([r["prompt"] for r in rows]),
             "messages": np.array([r["messages"] for r in rows], dtype=object),
             "prompt_token_ids": object_column([list(r["prompt_token_ids"]) for r in rows])}
    if candidates is not None:
        batch["candidates"] = object_column(candidates)
    return batch


class LatestWeights:
    """A named actor holding the ``ModelRef`` rank 0 pushed last, so any worker can give a restarted generator
    the current weights (refs travel as actor arguments, so Ray counts them and frees the older pushes)."""

    def __init__(self) -> None:
        self.ref: Any = None

    def set(self, ref: Any) -> None:
        self.ref = ref

    def get(self) -> Any:
        return self.ref


def latest_weights(name: str) -> Any:
    """The ``LatestWeights`` actor ``name`` (created by the first caller; 0 CPUs)."""
    import ray

    return ray.remote(LatestWeights).options(name=name, get_if_exists=True, num_cpus=0).remote()


class StepRollout:
    """One worker's client of a generator and the scorer, with timeouts and one retry after a generator death."""

    def __init__(self, generator_name: str, scorer_name: str, timeout_s: float, retries: int = 2,
                 board: str | None = None):
        import ray

        self.ray, self.timeout_s, self.retries = ray, timeout_s, retries
        self.generator_name, self.scorer_name = generator_name, scorer_name
        self.generator = ray.get_actor(generator_name)
        self.scorer = ray.get_actor(scorer_name)
        self.board = latest_weights(board or f"{scorer_name}-weights")  # shared by the workers: rank 0 pushes
        self.retried = 0  # calls retried after a generator death, over this worker's life

    def _get(self, ref: Any, what: str) -> Any:
        return ray_get(ref, self.timeout_s, what)

    def _with_generator(self, call: Any, what: str) -> Any:
        """``call(generator)``; after a generator death: wait for its restart, re-push weights, retry."""
        def before_retry(attempt: int, err: BaseException) -> None:
            log.warning("generator %s died during %s (%s): retrying", self.generator_name, what,
                        type(err.__cause__).__name__)
            self.retried += 1
            self._recover()

        return retry(lambda: self._get(call(self.generator), f"generator {self.generator_name}: {what}"),
                     attempts=self.retries + 1, transient=(ActorDied,), before_retry=before_retry,
                     give_up=lambda n, err: RuntimeError(f"generator {self.generator_name} died {n} times during "
                                                         f"{what}"))

    def _recover(self) -> None:
        self.generator = wait_restarted(self.generator_name, lambda h: h.current_model.remote(), self.timeout_s,
                                        "generator")
        weights = self._get(self.board.get.remote(), "latest pushed weights")
        if weights is not None:
            self._get(self.generator.reload_weights.remote(weights), "re-push weights")

    def generate(self, rows: list[dict[str, Any]], sample: SampleSpec, greedy: SampleSpec) -> tuple[list, list]:
        """One sampled and one greedy answer per row: two lists of {text, token_ids, finish_reason}."""
        batch = to_batch(rows)

        def answers(spec: SampleSpec) -> list[dict[str, Any]]:
            table = self._with_generator(lambda g: g.generate_batch.remote(batch, spec.__dict__),
                                         f"{len(rows)} prompts at temperature {spec.temperature}")
            return [{"text": r["candidates"][0], "token_ids": r["token_ids"][0],
                     "finish_reason": r["finish_reasons"][0]} for r in table.to_pylist()]

        return answers(sample), answers(greedy)

    def score(self, rows: list[dict[str, Any]], samples: list[dict], greedy: list[dict]) -> list[list[float]]:
        """[reward(sample), reward(greedy)] per row, from the scorer actor."""
        batch = to_batch(rows, [[s["text"], g["text"]] for s, g in zip(samples, greedy)])
        scores = self._get(self.scorer.score.remote(batch), f"scorer {self.scorer_name}")
        if len(scores) != len(rows) or any(len(s) != 2 for s in scores):
            raise RuntimeError(f"scorer {self.scorer_name} returned {len(scores)} rows for {len(rows)} prompts")
        return scores

    def push(self, weights: Any, names: list[str]) -> float:
        """Load ``weights`` (a ModelRef) in place into the generators ``names``, and publish them for recovery;
        returns the slowest reload's seconds (0 when ``names`` is empty)."""
        self._get(self.board.set.remote(weights), "publish pushed weights")
        handles = [self.ray.get_actor(n) for n in names]
        seconds = self._get([h.reload_weights.remote(weights) for h in handles], "reload pushed weights")
        return float(max(seconds, default=0.0))

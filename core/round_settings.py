"""The settings a round derives from its recipe, each with one owner: the vLLM engine's, and sampling per purpose.

Every vLLM engine (generator actors, Serve replicas, the reload scripts of the tests) is built from one
``EngineSettings``; every generation request (rollout, held-out answers, best-of-N, ReMax's sampled and greedy
responses) takes its ``SampleSpec`` from ``sampling(recipe, purpose)``. Their defaults are the recipe's own
(``PolicyConfig``, ``RolloutConfig``): nothing here or in an actor's signature restates them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from prefloop.core.config import PolicyConfig, Recipe, RolloutConfig, response_tokens
from prefloop.core.sampling import SampleSpec

Purpose = Literal["rollout", "eval", "best_of", "remax_sample", "remax_greedy"]


def _default(model: type, field: str) -> Any:
    return model.model_fields[field].default


@dataclass(frozen=True)
class EngineSettings:
    """What a ``vllm.LLM`` is built with (``actors/vllm_engine.build_llm``); defaults are the recipe's."""

    dtype: str = _default(PolicyConfig, "dtype")
    max_model_len: int = _default(RolloutConfig, "max_model_len")
    kv_cache_gb: float | None = _default(RolloutConfig, "kv_cache_gb")
    enforce_eager: bool = _default(RolloutConfig, "enforce_eager")
    tensor_parallel_size: int = _default(RolloutConfig, "tensor_parallel_size")

    @classmethod
    def of(cls, recipe: Recipe) -> "EngineSettings":
        ro = recipe.rollout
        return cls(recipe.policy.dtype, ro.max_model_len, ro.kv_cache_gb, ro.enforce_eager, ro.tensor_parallel_size)

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> "EngineSettings":
        """From ``as_dict()`` (what crosses into an actor or a Serve config); unknown keys are an error."""
        return cls(**settings)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sampling(recipe: Recipe, purpose: Purpose) -> SampleSpec:
    """The ``SampleSpec`` of one kind of request. Every purpose answers at the recipe's response length
    (``response_tokens``: ReMax's ``train.max_response_len``, else ``rollout.max_tokens``), so the held-out
    answers, best-of-N and the rollout are judged at the length they are trained at, unless ``eval.max_tokens``
    sets the evaluated answers' length (a card's generation setting for its benchmark).

    - rollout: N candidates per prompt at the rollout's temperature / top_p;
    - eval: one answer at ``loop.eval_temperature`` (0 = greedy);
    - best_of: ``eval.best_of`` samples at the rollout's temperature / top_p, for PairRM reranking;
    - remax_sample / remax_greedy: ReMax's sampled response (``train.remax`` temperature / top_p; the worker adds
      the step to the seed) and its greedy baseline (unseeded: greedy needs none)."""
    ro, length = recipe.rollout, response_tokens(recipe)
    if purpose == "rollout":
        return SampleSpec(ro.num_samples, ro.temperature, ro.top_p, length, ro.seed)
    eval_length = recipe.eval.max_tokens or length
    if purpose == "eval":
        return SampleSpec(1, recipe.loop.eval_temperature, recipe.eval.top_p, eval_length, ro.seed)
    if purpose == "best_of":
        if recipe.eval.best_of is None:
            raise ValueError("sampling('best_of'): the recipe has no eval.best_of")
        return SampleSpec(recipe.eval.best_of, ro.temperature, ro.top_p, eval_length, ro.seed)
    if purpose in ("remax_sample", "remax_greedy"):
        if recipe.train is None or recipe.train.method != "remax":
            raise ValueError(f"sampling({purpose!r}): the recipe's method is not remax")
        if purpose == "remax_greedy":
            return SampleSpec(1, 0.0, 1.0, length, None)
        rx = recipe.train.remax
        return SampleSpec(1, rx.temperature, rx.top_p, length, ro.seed)
    raise ValueError(f"unknown sampling purpose {purpose!r}")

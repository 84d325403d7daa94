"""The Ray Data stage machinery shared by rollout, evaluation and ReMax: actor-pool stages and how to run them.

A ``Stage`` is one ``map_batches`` step (a class Ray Data turns into an actor pool, its constructor kwargs, pool
size and resources). ``run_stages`` streams rows through a list of stages with a progress bar and a timeout
between results. The builders below make the stages a recipe needs:

- ``scorer_stage``: PairRM, a scalar reward model or a user function (``actors/scorers.py``); inside
  ``keep_scorers`` (the round loop) a forwarder to scorer actors kept across stages and rounds;
- ``fresh_generator_stage``: a vLLM actor pool that lives for one dataset execution (``prefloop rollout``);
- ``pooled_generator_stage``: a zero-CPU forwarder to the round loop's long-lived ``GeneratorPool``.

``sample_spec`` and ``engine_kwargs`` turn the recipe's rollout section into sampling and engine settings.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterator

from prefloop.app.watch import console
from prefloop.app.dataflow.runtime import iterate_with_timeout
from prefloop.core.config import Recipe, response_tokens
from prefloop.core.sampling import SampleSpec

if TYPE_CHECKING:
    from prefloop.actors.generator_pool import GeneratorPool


@dataclass
class Stage:
    """One Ray Data ``map_batches`` stage: a class, its constructor kwargs, pool size and resources."""

    cls: type
    kwargs: dict[str, Any]
    size: int
    batch_size: int
    num_cpus: float
    num_gpus: float = 0.0
    resources: dict[str, float] | None = None  # custom Ray resources (resources.placement)


def sample_spec(recipe: Recipe) -> SampleSpec:
    """The rollout's sampling settings: N candidates per prompt."""
    ro = recipe.rollout
    return SampleSpec(ro.num_samples, ro.temperature, ro.top_p, response_tokens(recipe), ro.seed)


def engine_kwargs(recipe: Recipe) -> dict[str, Any]:
    """The vLLM engine settings every generator actor is built with."""
    ro = recipe.rollout
    return dict(dtype=recipe.policy.dtype, max_model_len=ro.max_model_len, kv_cache_gb=ro.kv_cache_gb,
                enforce_eager=ro.enforce_eager, tensor_parallel_size=ro.tensor_parallel_size)


def own_scorer_stage(recipe: Recipe) -> Stage:
    """The recipe's scorer as a stage of its own actor pool (function scorers hold no GPU)."""
    from prefloop.actors.scorers import FunctionScorer, PairRMScorer, RewardModelScorer

    sc, res = recipe.scorer, recipe.resources
    if sc.kind == "pairrm":
        cls, kwargs = PairRMScorer, {"ranker_dir": sc.model, "batch_size": sc.batch_size,
                                     "comparisons": sc.comparisons}
    elif sc.kind == "reward_model":
        cls, kwargs = RewardModelScorer, {"model_dir": sc.model, "chat_template": sc.chat_template,
                                          "batch_size": sc.batch_size,
                                          "reward_head": sc.reward_head.model_dump() if sc.reward_head else None}
    elif sc.kind == "ifeval":
        from prefloop.actors.ifeval_scorer import IFEvalScorer

        cls, kwargs = IFEvalScorer, {"instructions": sc.instructions, "instruction_ids": sc.instruction_ids}
    else:
        cls, kwargs = FunctionScorer, {"function": sc.function}
    gpus = res.scorer_gpus if sc.kind not in ("function", "ifeval") else 0.0
    return Stage(cls, kwargs, sc.num_scorers, sc.batch_size, res.scorer_cpus, gpus, res.custom("scorer"))


def scorer_stage(recipe: Recipe) -> Stage:
    """The recipe's scorer stage: a forwarder to the kept scorer actors inside ``keep_scorers``, else its own
    actor pool."""
    stage = own_scorer_stage(recipe)
    if _scorer_pools is None:
        return stage
    from prefloop.actors.scorer_pool import PooledScorer

    timeout_s = recipe.resources.stage_timeout_s
    names = kept_scorer(stage, timeout_s).names
    return Stage(PooledScorer, {"names": names, "timeout_s": timeout_s}, len(names), stage.batch_size, 0.0)


# While the round loop runs (``keep_scorers``), each scorer configuration's actors start once and every stage
# forwards to them (``actors/scorer_pool.py``); outside it (one-stage commands) a stage starts its own pool.
_scorer_pools: dict[str, Any] | None = None


@contextmanager
def keep_scorers() -> Iterator[None]:
    """Within: scorer actors are kept across stages and rounds; on exit they are shut down."""
    global _scorer_pools
    _scorer_pools = {}
    try:
        yield
    finally:
        pools, _scorer_pools = _scorer_pools, None
        for pool in pools.values():
            pool.shutdown()


def kept_scorer(stage: Stage, timeout_s: float) -> Any:
    """The kept ``ScorerPool`` for ``stage``'s scorer configuration, started on first use (``keep_scorers``)."""
    from prefloop.actors.scorer_pool import ScorerPool

    if _scorer_pools is None:
        raise RuntimeError("kept_scorer: only inside keep_scorers()")
    key = json.dumps([stage.cls.__name__, stage.kwargs, stage.size, stage.num_cpus, stage.num_gpus,
                      stage.resources], sort_keys=True, default=str)
    if key not in _scorer_pools:
        _scorer_pools[key] = ScorerPool.start(stage.cls, stage.kwargs, stage.size, stage.num_cpus, stage.num_gpus,
                                              timeout_s, stage.resources)
    return _scorer_pools[key]


def kept_scorer_names(recipe: Recipe) -> list[str] | None:
    """The kept scorer actors' names for ``recipe.scorer`` inside ``keep_scorers``, else None."""
    if _scorer_pools is None:
        return None
    return kept_scorer(own_scorer_stage(recipe), recipe.resources.stage_timeout_s).names


def fresh_generator_stage(recipe: Recipe, policy_dir: str, spec: SampleSpec | None = None) -> Stage:
    """A vLLM actor pool built for this one stage on ``policy_dir`` (shipped to the actors' nodes through Ray)."""
    from prefloop.actors.generator import VLLMGenerator
    from prefloop.actors.model_cache import ship

    ro, res = recipe.rollout, recipe.resources
    kwargs = dict(model=ship(policy_dir), spec=spec or sample_spec(recipe), **engine_kwargs(recipe))
    return Stage(VLLMGenerator, kwargs, ro.num_generators, ro.batch_size, res.generator_cpus, res.generator_gpus,
                 res.custom("generator"))


def pooled_generator_stage(recipe: Recipe, pool: GeneratorPool, spec: SampleSpec | None = None) -> Stage:
    """A forwarder to the long-lived generator actors of ``pool`` (which already hold the weights to use)."""
    from prefloop.actors.generator_pool import PooledGenerator

    kwargs = {"names": pool.names, "timeout_s": recipe.resources.stage_timeout_s,
              "spec": asdict(spec) if spec else None, "model": pool.ref}  # a restarted actor reloads it first
    return Stage(PooledGenerator, kwargs, len(pool.names), recipe.rollout.batch_size, 0.0)


def generator_stage(recipe: Recipe, policy_dir: str, pool: GeneratorPool | None) -> Stage:
    """The pool's forwarder when the round loop runs one, else a fresh actor pool on ``policy_dir``."""
    return pooled_generator_stage(recipe, pool) if pool is not None else fresh_generator_stage(recipe, policy_dir)


def run_stages(rows: list[dict[str, Any]], stages: list[Stage], timeout_s: float, desc: str) -> list[dict]:
    """Stream rows through the stages' actor pools; return every output row (with a progress bar)."""
    import ray

    ds = add_stages(ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // stages[0].batch_size)),
                    stages)
    rows_iter = iterate_with_timeout(ds.iter_rows(), timeout_s, desc)
    return list(console.track(rows_iter, len(rows), desc))  # a bar on a TTY, one line per event otherwise


def add_stages(ds: Any, stages: list[Stage]) -> Any:
    """``ds`` through each stage's actor pool (with its resources: ``resources.placement``)."""
    import ray

    for st in stages:
        ds = ds.map_batches(st.cls, fn_constructor_kwargs=st.kwargs, batch_size=st.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=st.size), num_cpus=st.num_cpus,
                            num_gpus=st.num_gpus, **({"resources": st.resources} if st.resources else {}))
    return ds

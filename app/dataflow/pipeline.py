"""The Ray Data steps shared by rollout, evaluation and ReMax: actor-pool steps and how to run them.

A ``PoolStep`` is one ``map_batches`` step (a class Ray Data turns into an actor pool, its constructor kwargs,
pool size and resources). ``run_steps`` streams rows through a list of steps with a progress bar and a timeout
between results. ("Stage" is kept for what a round commits to its run directory: rollout, model, eval.) The
builders below make the steps a recipe needs:

- ``scorer_step``: PairRM, a scalar reward model, IFEval's checkers or a user function (the judge registry's
  scorer class); inside ``keep_scorers`` (the round loop) a forwarder to scorer actors kept across steps and
  rounds;
- ``fresh_generator_step``: a vLLM actor pool that lives for one dataset execution (``prefloop rollout``);
- ``pooled_generator_step``: a zero-CPU forwarder to the round loop's long-lived ``GeneratorPool``.

The sampling and engine settings come from ``core/round_settings.py``, their one owner.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterator

from prefloop.app.dataflow.runtime import iterate_with_timeout
from prefloop.app.watch import console
from prefloop.core.config import Recipe
from prefloop.core.judges import judge_kind, load_class
from prefloop.core.round_settings import EngineSettings
from prefloop.core.sampling import SampleSpec

if TYPE_CHECKING:
    from prefloop.actors.generator_pool import GeneratorPool


@dataclass
class PoolStep:
    """One Ray Data ``map_batches`` step: a class, its constructor kwargs, pool size and resources."""

    cls: type
    kwargs: dict[str, Any]
    size: int
    batch_size: int
    num_cpus: float
    num_gpus: float = 0.0
    resources: dict[str, float] | None = None  # custom Ray resources (resources.placement)


def own_scorer_step(recipe: Recipe) -> PoolStep:
    """The recipe's scorer as a step of its own actor pool: its class and arguments from the judge registry."""
    sc, res = recipe.scorer, recipe.resources
    kind = judge_kind(sc.kind)
    gpus = res.scorer_gpus if kind.gpu else 0.0
    return PoolStep(load_class(kind.scorer), kind.kwargs(sc), sc.num_scorers, sc.batch_size, res.scorer_cpus, gpus,
                 res.custom("scorer"))


def scorer_step(recipe: Recipe) -> PoolStep:
    """The recipe's scorer step: a forwarder to the kept scorer actors inside ``keep_scorers``, else its own
    actor pool."""
    step = own_scorer_step(recipe)
    if _scorer_pools is None:
        return step
    from prefloop.actors.scorer_pool import PooledScorer

    timeout_s = recipe.resources.wait_timeout_s
    names = kept_scorer(step, timeout_s).names
    return PoolStep(PooledScorer, {"names": names, "timeout_s": timeout_s}, len(names), step.batch_size, 0.0)


# While the round loop runs (``keep_scorers``), each scorer configuration's actors start once and every step
# forwards to them (``actors/scorer_pool.py``); outside it (one-step commands) a step starts its own pool.
_scorer_pools: dict[str, Any] | None = None


@contextmanager
def keep_scorers() -> Iterator[None]:
    """Within: scorer actors are kept across steps and rounds; on exit they are shut down."""
    global _scorer_pools
    _scorer_pools = {}
    try:
        yield
    finally:
        pools, _scorer_pools = _scorer_pools, None
        for pool in pools.values():
            pool.shutdown()


def kept_scorer(step: PoolStep, timeout_s: float) -> Any:
    """The kept ``ScorerPool`` for ``step``'s scorer configuration, started on first use (``keep_scorers``)."""
    from prefloop.actors.scorer_pool import ScorerPool

    if _scorer_pools is None:
        raise RuntimeError("kept_scorer: only inside keep_scorers()")
    key = json.dumps([step.cls.__name__, step.kwargs, step.size, step.num_cpus, step.num_gpus,
                      step.resources], sort_keys=True, default=str)
    if key not in _scorer_pools:
        _scorer_pools[key] = ScorerPool.start(step.cls, step.kwargs, step.size, step.num_cpus, step.num_gpus,
                                              timeout_s, step.resources)
    return _scorer_pools[key]


def kept_scorer_names(recipe: Recipe) -> list[str] | None:
    """The kept scorer actors' names for ``recipe.scorer`` inside ``keep_scorers``, else None."""
    if _scorer_pools is None:
        return None
    return kept_scorer(own_scorer_step(recipe), recipe.resources.wait_timeout_s).names


def fresh_generator_step(recipe: Recipe, policy_dir: str, spec: SampleSpec) -> PoolStep:
    """A vLLM actor pool built for this one step on ``policy_dir`` (shipped to the actors' nodes through Ray)."""
    from prefloop.actors.generator import VLLMGenerator
    from prefloop.actors.model_cache import ship

    ro, res = recipe.rollout, recipe.resources
    kwargs = dict(model=ship(policy_dir), spec=spec, engine=EngineSettings.of(recipe).as_dict())
    return PoolStep(VLLMGenerator, kwargs, ro.num_generators, ro.batch_size, res.generator_cpus, res.generator_gpus,
                 res.custom("generator"))


def pooled_generator_step(recipe: Recipe, pool: GeneratorPool, spec: SampleSpec) -> PoolStep:
    """A forwarder to the long-lived generator actors of ``pool`` (which already hold the weights to use)."""
    from prefloop.actors.generator_pool import PooledGenerator

    kwargs = {"names": pool.names, "timeout_s": recipe.resources.wait_timeout_s,
              "spec": asdict(spec), "model": pool.ref}  # a restarted actor reloads it first
    return PoolStep(PooledGenerator, kwargs, len(pool.names), recipe.rollout.batch_size, 0.0)


def generator_step(recipe: Recipe, policy_dir: str, pool: GeneratorPool | None, spec: SampleSpec) -> PoolStep:
    """The pool's forwarder when the round loop runs one, else a fresh actor pool on ``policy_dir``."""
    if pool is not None:
        return pooled_generator_step(recipe, pool, spec)
    return fresh_generator_step(recipe, policy_dir, spec)


def run_steps(rows: list[dict[str, Any]], steps: list[PoolStep], timeout_s: float, desc: str) -> list[dict]:
    """Stream rows through the steps' actor pools; return every output row (with a progress bar)."""
    import ray

    ds = add_steps(ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // steps[0].batch_size)),
                   steps)
    rows_iter = iterate_with_timeout(ds.iter_rows(), timeout_s, desc)
    return list(console.track(rows_iter, len(rows), desc))  # a bar on a TTY, one line per event otherwise


def add_steps(ds: Any, steps: list[PoolStep]) -> Any:
    """``ds`` through each step's actor pool (with its resources: ``resources.placement``)."""
    import ray

    for st in steps:
        ds = ds.map_batches(st.cls, fn_constructor_kwargs=st.kwargs, batch_size=st.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=st.size), num_cpus=st.num_cpus,
                            num_gpus=st.num_gpus, **({"resources": st.resources} if st.resources else {}))
    return ds

"""The Ray Data stage machinery shared by rollout, evaluation and ReMax: actor-pool stages and how to run them.

A ``Stage`` is one ``map_batches`` step (a class Ray Data turns into an actor pool, its constructor kwargs, pool
size and resources). ``run_stages`` streams rows through a list of stages with a progress bar and a timeout
between results. The builders below make the stages a recipe needs:

- ``scorer_stage``: PairRM, a scalar reward model or a user function (``actors/scorers.py``);
- ``fresh_generator_stage``: a vLLM actor pool that lives for one dataset execution (``prefloop rollout``);
- ``pooled_generator_stage``: a zero-CPU forwarder to the round loop's long-lived ``GeneratorPool``.

``sample_spec`` and ``engine_kwargs`` turn the recipe's rollout section into sampling and engine settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from prefloop.app import console
from prefloop.app.runtime import iterate_with_timeout
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


def scorer_stage(recipe: Recipe) -> Stage:
    """The recipe's scorer as an actor-pool stage (function scorers hold no GPU)."""
    from prefloop.actors.scorers import FunctionScorer, PairRMScorer, RewardModelScorer

    sc, res = recipe.scorer, recipe.resources
    if sc.kind == "pairrm":
        cls, kwargs = PairRMScorer, {"ranker_dir": sc.model, "batch_size": sc.batch_size,
                                     "comparisons": sc.comparisons}
    elif sc.kind == "reward_model":
        cls, kwargs = RewardModelScorer, {"model_dir": sc.model, "chat_template": sc.chat_template,
                                          "batch_size": sc.batch_size,
                                          "reward_head": sc.reward_head.model_dump() if sc.reward_head else None}
    else:
        cls, kwargs = FunctionScorer, {"function": sc.function}
    gpus = res.scorer_gpus if sc.kind != "function" else 0.0
    return Stage(cls, kwargs, sc.num_scorers, sc.batch_size, res.scorer_cpus, gpus, res.custom("scorer"))


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

    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // stages[0].batch_size))
    for st in stages:
        ds = ds.map_batches(st.cls, fn_constructor_kwargs=st.kwargs, batch_size=st.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=st.size), num_cpus=st.num_cpus,
                            num_gpus=st.num_gpus, **({"resources": st.resources} if st.resources else {}))
    rows_iter = iterate_with_timeout(ds.iter_rows(), timeout_s, desc)
    return list(console.track(rows_iter, len(rows), desc))  # a bar on a TTY, one line per event otherwise

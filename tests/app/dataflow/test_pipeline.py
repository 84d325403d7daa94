"""The Ray Data steps (app/dataflow/pipeline.py): which step a recipe's scorer and generator become, outside and
inside the round loop's kept actors (no Ray: the steps are only built), and their resources once Ray Data has them
(marked ``ray``)."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from prefloop.actors.generator_pool import GeneratorPool, PooledGenerator
from prefloop.actors.scorers import FunctionScorer, PairRMScorer
from prefloop.app.dataflow import pipeline
from prefloop.app.dataflow.pipeline import (
    PoolStep,
    generator_step,
    kept_scorer,
    kept_scorer_names,
    scorer_step,
)
from prefloop.core.config import parse_recipe
from prefloop.core.sampling import SampleSpec


def recipe(scorer, **resources):
    return parse_recipe({"name": "t", "run_dir": "/tmp/unused", "policy": {"model": "/m/policy"},
                         "data": {"train": "p.jsonl"}, "rollout": {"batch_size": 6},
                         "scorer": {"num_scorers": 2, "batch_size": 5, **scorer},
                         "resources": {"scorer_gpus": 1, "scorer_cpus": 0.5, **resources}}, "t.yaml")


def test_a_scorer_step_is_the_judge_registrys_class_with_its_resources():
    step = scorer_step(recipe({"kind": "pairrm", "model": "/m/pairrm"}, placement={"scorer": {"rm": 1}}))
    assert step == PoolStep(PairRMScorer, {"ranker_dir": "/m/pairrm", "batch_size": 5, "comparisons": "full"},
                            2, 5, 0.5, 1, {"rm": 1})
    function = scorer_step(recipe({"kind": "function", "function": "prefloop.core.rewards:brevity"}))
    assert function.cls is FunctionScorer and function.num_gpus == 0.0  # a function never takes the scorer GPUs
    assert function.resources == {}


def test_outside_the_round_loop_no_scorer_is_kept():
    rec = recipe({"kind": "function", "function": "prefloop.core.rewards:brevity"})
    assert kept_scorer_names(rec) is None
    with pytest.raises(RuntimeError, match=r"kept_scorer: only inside keep_scorers\(\)"):
        kept_scorer(scorer_step(rec), 10)


def test_inside_the_round_loop_a_scorer_step_forwards_to_actors_started_once(monkeypatch):
    from prefloop.actors.scorer_pool import PooledScorer, ScorerPool

    started = []

    class Kept:  # a started ScorerPool, recorded instead of started (its actors are Ray's)
        def __init__(self, *args):
            started.append(args)
            self.names, self.stopped = [f"scorer-{len(started)}-{i}" for i in range(args[2])], False

        def shutdown(self):
            self.stopped = True

    monkeypatch.setattr(ScorerPool, "start", classmethod(lambda cls, *args: Kept(*args)))
    rec = recipe({"kind": "function", "function": "prefloop.core.rewards:brevity"}, wait_timeout_s=30)
    with pipeline.keep_scorers():
        first, again = scorer_step(rec), scorer_step(rec)
        names = kept_scorer_names(rec)
        pools = list(pipeline._scorer_pools.values())
    assert len(started) == 1  # one configuration, one pool, for every step
    assert first == again == PoolStep(PooledScorer, {"names": names, "timeout_s": 30}, 2, 5, 0.0)
    assert [p.stopped for p in pools] == [True] and pipeline._scorer_pools is None  # shut down on exit


def test_a_generator_step_forwards_to_the_loops_pool():
    rec = recipe({"kind": "function", "function": "prefloop.core.rewards:brevity"}, wait_timeout_s=40)
    pool = GeneratorPool(["gen-0", "gen-1", "gen-2"], [None] * 3, "/m/round_0/model", timeout_s=40)
    spec = SampleSpec(n=4, temperature=1.0, top_p=1.0, max_tokens=16, seed=0)
    step = generator_step(rec, "/m/policy", pool, spec)
    assert step.cls is PooledGenerator and (step.size, step.batch_size, step.num_cpus) == (3, 6, 0.0)
    assert step.kwargs == {"names": ["gen-0", "gen-1", "gen-2"], "timeout_s": 40, "spec": asdict(spec),
                           "model": "/m/round_0/model"}


class _Same:
    def __call__(self, batch):
        return batch


@pytest.mark.ray
def test_every_stage_keeps_its_placement_resources(ray_cluster):
    """Both the rollout's stream and ``run_steps`` build their stages with ``add_steps``: a stage pinned by
    ``resources.placement`` keeps its custom resource (the stream path once dropped it)."""
    import ray

    from prefloop.app.dataflow.pipeline import add_steps

    ds = add_steps(ray.data.range(4), [PoolStep(_Same, {}, 1, 2, 0.5, 0.0, {"pf_gen": 1.0}),
                                        PoolStep(_Same, {}, 1, 2, 0.0)])
    last = ds._logical_plan.dag
    assert "resources" not in last.ray_remote_args
    assert last.input_dependencies[0].ray_remote_args["resources"] == {"pf_gen": 1.0}

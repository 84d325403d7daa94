"""ReMax on real components: vLLM generator actors, a scorer actor, Ray Train workers that stay up across steps.

- Learning, with faults: a reward the tiny policy can learn (``prefloop.core.rewards:brevity``); a training
  worker dies mid-run (the group resumes from the last checkpoint) and a generator actor is killed mid-step
  (its work is retried on the restarted actor with the current weights). The mean reward of sampled answers
  still rises over the steps.
- Learning runs with DDP; the shipped recipe (FSDP, as for a 7B model) runs through ``--tiny`` (scalar reward
  model in UltraRM's template) in the round loop, with Serve following the ReMax checkpoints and then the final
  model, and the run directory on a ``file://`` URI.
"""

import json
import os
import statistics

import pytest

from prefloop.app.front.recipes import resolve_recipe
from prefloop.app.rounds.loop import run_loop, start_pool
from prefloop.app.rounds.remax import follow_checkpoints, follow_steps, run_remax
from prefloop.app.rounds.round import Round
from tests.paths import RECIPES

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RECIPE = str(RECIPES / "remax-ultrarm.yaml")


@pytest.fixture
def tiny_env(tiny_assets, monkeypatch):
    monkeypatch.setenv("PREFLOOP_ASSETS", str(tiny_assets.root))


def test_remax_learns_a_reward_and_survives_worker_and_generator_deaths(tmp_path, tiny_env, ray_cluster):
    recipe = resolve_recipe(RECIPE, [
        f"run_dir={tmp_path / 'run'}", "data.limit=64", "train.epochs=4", "train.remax.prompts_per_step=16",
        "train.lr=1e-3", "train.remax.kl_ctl=0.01", "train.checkpoint_every_steps=3", "train.strategy=ddp",
        "scorer.kind=function", "scorer.function=prefloop.core.rewards:brevity"], tiny=True)
    pool = start_pool(recipe, recipe.policy.model)
    try:
        model = run_remax(Round.of(recipe, 0, pool), kill_at_step=6, kill_generator_at_step=9)
    finally:
        pool.shutdown()
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["method"] == "remax" and manifest["steps"]["planned"] == manifest["steps"]["done"] == 16
    assert manifest["steps"]["restored_from"] == [6]  # the worker death resumed from step 6's checkpoint
    steps = [json.loads(line) for line in (model / "remax_metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == list(range(1, 17))
    assert max(m["generator_retries"] for m in steps) >= 1  # the killed generator's work was retried
    for m in steps:  # every step generated, scored, trained and pushed weights; the advantage is clipped
        assert all(m[f"{part}_s"] > 0 for part in ("generate", "score", "train", "sync")), m
        assert abs(m["advantage"]) <= 1.0
    # step 1 runs the reference's own weights: its KL to the reference is 0; the last steps have moved away
    assert steps[0]["kl"] < 1e-4, steps[0]
    first = statistics.mean(m["reward_sample"] for m in steps[:4])
    last = statistics.mean(m["reward_sample"] for m in steps[-4:])
    assert last > first + 0.08, (first, last)  # learning, not only changed weights
    assert steps[-1]["kl"] > 0.01 and steps[-1]["response_len"] < steps[0]["response_len"]
    assert (model / "config.json").is_file() and not (tmp_path / "run" / "round_0" / "remax").exists()


def test_remax_recipe_tiny_in_the_loop_with_serve_on_a_uri_run_dir(tmp_path, tiny_env, ray_cluster, monkeypatch,
                                                                   graded_by_gold):
    """Also the run directory on shared storage: a ``file://`` URI (the same pyarrow path as s3:// or gs://)."""
    from prefloop.app.serving.serve import replica_states, stop_serving
    from prefloop.app.storage.rundir import RunDir

    monkeypatch.setenv("PREFLOOP_RUNS_CACHE", str(tmp_path / "cache"))
    uri, remote = f"file://{tmp_path}/bucket/run", tmp_path / "bucket" / "run"
    recipe = resolve_recipe(RECIPE, [f"run_dir={uri}", "train.remax.max_steps=4", "loop.serve=true",
                                     "loop.serve_port=8731", "tracking.backend=tensorboard",
                                     f"tracking.uri={tmp_path / 'tb'}"], tiny=True)
    try:
        rows = run_loop(recipe)
        states = replica_states("prefloop")
    finally:
        stop_serving("prefloop")
    assert [m["round"] for m in rows] == [0] and rows[0]["method"] == "remax"
    graded_by_gold(RunDir(uri).root, rows[0])  # the tiny section's eval judge: the tiny world's preference
    local = RunDir(uri).root
    final = str((local / "round_0" / "model").resolve())
    for state in states.values():
        published = [s["model_dir"] for s in state["swaps"]]
        # the checkpoint of step 2 (every 2 steps; step 4 is the final model), then the committed model
        assert any("/published/step_2" in d for d in published) and published[-1] == final, published
    metrics = [json.loads(line) for line in (remote / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m.get("method") == "remax"] == [1, 2, 3, 4]
    assert "| 0 |" in (remote / "report.md").read_text()
    # Ray Train checkpointed onto the URI (what multi-node workers need), and the committed round dropped them
    manifest = json.loads((remote / "round_0" / "model" / "manifest.json").read_text())
    assert manifest["checkpoint_storage"] == f"{uri}/round_0/remax" and manifest["steps"]["done"] == 4
    assert manifest["train"]["strategy"] == "fsdp"  # the recipe's: rank 0 gathered the weights for each push
    assert not (remote / "round_0" / "remax").exists()
    # every step reached the tracker while the round ran (the driver tails rank 0's step lines)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("remax/reward_sample")] == [1, 2, 3, 4]
    for stage in ("base_answers", "model", "eval"):
        assert (remote / "round_0" / stage / "manifest.json").is_file()
    assert (remote / "round_0" / "model" / "model.safetensors").is_file()


def test_follow_checkpoints_publishes_complete_ones_in_order(tmp_path):
    import threading

    for step, done in ((10, True), (2, True), (4, False)):
        (tmp_path / f"step_{step}").mkdir()
        if done:
            (tmp_path / f"step_{step}" / "done").touch()
    seen, stop = [], threading.Event()

    def publish(path):
        seen.append(os.path.basename(path))
        if len(seen) == 2:
            (tmp_path / "step_4" / "done").touch()  # completed later: published on the next poll
        if len(seen) == 3:
            stop.set()
        if path.endswith("step_2"):
            raise RuntimeError("a failed publish is logged, not fatal")

    follow_checkpoints(tmp_path, publish, stop)
    assert seen == ["step_2", "step_10", "step_4"]


def test_follow_steps_feeds_complete_lines_and_the_last_ones_after_stop(tmp_path):
    import json
    import threading

    steps_file, seen, stop = tmp_path / "steps.jsonl", [], threading.Event()
    steps_file.write_text(json.dumps({"step": 1, "kl": 0.0}) + "\n" + '{"step": 2, "kl"')  # step 2 half-written

    def on_step(step, metrics):
        seen.append((step, metrics["kl"]))
        if step == 1:  # step 2 completes and step 3 arrives; stop at once: the last poll must still read them
            with open(steps_file, "a") as f:
                f.write(': 0.5}\n' + json.dumps({"step": 3, "kl": 0.25}) + "\n")
            stop.set()

    follow_steps(steps_file, on_step, stop)
    assert seen == [(1, 0.0), (2, 0.5), (3, 0.25)]

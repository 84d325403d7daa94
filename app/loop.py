"""The round loop (``prefloop run RECIPE``): rollout -> train -> publish -> evaluate, round after round.

For round r: the generators hold the round's starting policy (base, or round r-1's model); rollout samples
and judges; training makes ``round_r/model`` against the previous round as reference; the new weights are
swapped into the same vLLM engines (no restart; the swap time is reported) and, when ``loop.serve`` is on,
into the Ray Serve app; the held-out prompts are answered and judged against the base model; the round's
``eval`` stage commits last. Every stage commits atomically, so running the same command again after a crash
continues from the last committed stage: no round is lost, none is trained twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prefloop.app import console, evaluate, report, telemetry
from prefloop.app.remax import run_remax
from prefloop.app.rollout import engine_kwargs, run_rollout, sample_spec
from prefloop.app.rundir import RunDir
from prefloop.app.runtime import init_ray
from prefloop.app.train import run_train, start_model
from prefloop.core.config import Recipe, dump_recipe

log = logging.getLogger(__name__)


def start_pool(recipe: Recipe, model: str) -> Any:
    from prefloop.actors.generator_pool import GeneratorPool

    res = recipe.resources
    return GeneratorPool.start(model, sample_spec(recipe), engine_kwargs(recipe), recipe.rollout.num_generators,
                               res.generator_cpus, res.generator_gpus, res.stage_timeout_s)


def ensure_model(pool: Any, model: str) -> float:
    """Make the pool hold ``model``; returns the swap seconds (0 if it already does)."""
    return 0.0 if pool.model == model else pool.reload(model)


def start_serving(recipe: Recipe, run: RunDir) -> None:
    """Serve the run's latest committed round (or the base model) when ``loop.serve`` is on."""
    if recipe.loop.serve:
        from prefloop.app.serve import serve_run_dir

        serve_run_dir(run.root, port=recipe.loop.serve_port)


def publish(recipe: Recipe, model_dir: str, round_idx: int) -> float | None:
    """Hot-swap round ``round_idx``'s model into the Serve app (when serving is on); returns the seconds."""
    if not recipe.loop.serve:
        return None
    from prefloop.app.serve import publish as serve_publish

    return serve_publish(model_dir, round_idx)["publish_s"]


def enter_stage(name: str, round_idx: int | None) -> None:
    """The gauges (telemetry) and the console / heartbeat follow the stage the driver is in."""
    telemetry.stage(name)
    console.get().stage(name, round_idx)


def round_recipe(recipe: Recipe, r: int) -> Recipe:
    """The recipe as round ``r`` sees it: ``loop.methods[r]`` replaces ``train.method`` when given."""
    if recipe.loop.methods is None:
        return recipe
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"method": recipe.loop.methods[r]})})


def run_round(recipe: Recipe, run: RunDir, r: int, pool: Any, eval_rows: list[dict], base: list[dict]) -> dict:
    """One round. Online (no ``train.data``): rollout with the current policy, then train on its pairs.
    Offline (``train.data`` given, e.g. the Snorkel partitions): train on that file, no rollout."""
    started = time.perf_counter()
    recipe = round_recipe(recipe, r)
    swap_in = ensure_model(pool, start_model(run, recipe, r))
    remax = recipe.train.method == "remax"
    if recipe.train.data is None and not remax:
        enter_stage("rollout", r)
        run_rollout(recipe, r, pool.model, pool)
    t_rollout = time.perf_counter() - started
    enter_stage("train", r)
    if remax:  # on-policy: the ReMax workers sample through the pool themselves; Serve follows its checkpoints
        follow = (lambda d: publish(recipe, d, r)) if recipe.loop.serve else None
        model_dir = str(run_remax(recipe, r, pool, follow))
    else:
        model_dir = str(run_train(recipe, r))
    t_train = time.perf_counter() - started - t_rollout
    enter_stage("swap", r)
    swap_s = ensure_model(pool, model_dir)
    serve_swap_s = publish(recipe, model_dir, r)
    model_manifest = run.manifest(r, "model")
    trained = model_manifest.get("counts", {})
    if remax:  # the ReMax workers swapped weights every step: report their last step's sync time
        pairs, swap_s = trained.get("prompts", 0), model_manifest["final_metrics"].get("sync_s", swap_s)
    else:
        pairs = (run.manifest(r, "rollout")["counts"]["pairs"] if recipe.train.data is None
                 else trained.get("accepted", 0))
    extra = {"pairs": pairs, "method": recipe.train.method, "swap_s": swap_s or swap_in,
             "serve_swap_s": serve_swap_s, "timings_s": {"rollout": t_rollout, "train": t_train}}
    enter_stage("eval", r)
    return evaluate.evaluate_round(recipe, run, r, eval_rows, base, pool, extra, started)


def run_loop(recipe: Recipe) -> list[dict]:
    """Run every round not yet committed; return the per-round eval manifests."""
    from transformers import AutoTokenizer

    if recipe.train is None:
        raise ValueError("train: the round loop needs a train section in the recipe")
    run = RunDir(recipe.run_dir)
    run.save_text("recipe.yaml", dump_recipe(recipe))
    rounds = range(recipe.loop.rounds)
    if all(run.is_committed(r, evaluate.EVAL_STAGE) for r in rounds):
        log.info("all %d rounds already committed", len(rounds))
        return report.write_report(recipe, run)
    con = console.get().attach(run.root, recipe.name, run.mirror.push_file if run.mirror else None)
    con.stage("setup", None)  # Ray, the generators' engines (and Serve) come up
    init_ray(recipe.resources)
    tel = telemetry.Telemetry.start(recipe, run.root)  # Ray gauges + tracking
    eval_rows = evaluate.eval_prompts(recipe, AutoTokenizer.from_pretrained(recipe.policy.model)).rows
    pool = start_pool(recipe, recipe.policy.model)
    start_serving(recipe, run)
    try:
        enter_stage("base_answers", None)
        base = evaluate.base_answers(recipe, run, eval_rows, pool)
        for r in rounds:
            if run.is_committed(r, evaluate.EVAL_STAGE):
                log.info("round %d already committed: skipping", r)
                con.round_done(run.manifest(r, evaluate.EVAL_STAGE))
                continue
            m = run_round(recipe, run, r, pool, eval_rows, base)
            log.info("round %d: %d pairs, win rate vs base %.3f (+-%.3f), mean length %.1f, swap %.3f s",
                     r, m["pairs"], m["win_rate"], m["win_rate_stderr"], m["mean_length"], m["swap_s"])
            tel.round_done(r, telemetry.round_metrics(run.root, r, m))
            report.write_report(recipe, run)
            con.round_done(m)
    finally:
        tel.close()
        pool.shutdown()
        con.detach()
    return report.write_report(recipe, run)

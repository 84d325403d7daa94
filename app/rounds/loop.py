"""The round loop (``prefloop run RECIPE``): rollout -> train -> swap -> evaluate, round after round.

For round r: the generators hold the round's starting policy (base, or round r-1's model); rollout samples
and judges; training makes ``round_r/model`` against the previous round as reference; the new weights are
swapped into the same vLLM engines (no restart; the swap time is reported) and, when ``loop.serve`` is on,
into the Ray Serve app; with ``eval.leaderboard``, lm_eval's tasks run on the new model
(``app/rounds/leaderboard.py``); the held-out prompts are answered and judged against the base model; the
round's ``eval`` stage commits last. Every stage commits atomically, so running the same command again after a crash
continues from the last committed stage: no round is lost, none is trained twice.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from prefloop.app.dataflow.pipeline import keep_scorers
from prefloop.app.dataflow.runtime import init_ray
from prefloop.app.rounds import evaluate, leaderboard
from prefloop.app.rounds.remax import run_remax
from prefloop.app.rounds.rollout import run_rollout
from prefloop.app.rounds.round import Round
from prefloop.app.rounds.round_summary import round_summary
from prefloop.app.rounds.train import run_train
from prefloop.app.storage.rundir import EVAL, RunDir
from prefloop.app.storage.runlock import hold_run
from prefloop.app.watch import console, report
from prefloop.app.watch.telemetry import Telemetry
from prefloop.core.config import Recipe, RecipeError, dump_recipe
from prefloop.core.round_settings import EngineSettings, sampling

if TYPE_CHECKING:
    from prefloop.actors.generator_pool import GeneratorPool

log = logging.getLogger(__name__)


def start_pool(recipe: Recipe, model: str) -> GeneratorPool:
    """The long-lived vLLM generator actors, holding ``model``; each round's weights are swapped into them."""
    from prefloop.actors.generator_pool import GeneratorPool
    from prefloop.actors.model_cache import ship

    res = recipe.resources
    return GeneratorPool.start(ship(model), sampling(recipe, "rollout"), EngineSettings.of(recipe).as_dict(),
                               recipe.rollout.num_generators, res.generator_cpus, res.generator_gpus,
                               res.wait_timeout_s, resources=res.custom("generator"))


def ensure_model(pool: GeneratorPool, model: str) -> float:
    """Make the pool hold ``model`` (a folder on this node is shipped through Ray to the actors' nodes);
    returns the swap seconds (0 if it already does)."""
    from prefloop.actors.model_cache import ship

    return 0.0 if pool.model == model else pool.reload(ship(model))


def serve_latest_round(recipe: Recipe, run: RunDir) -> Future | None:
    """Start serving the run's latest committed round (or the base model) when ``loop.serve`` is on.

    It starts in a thread, beside the generators' start: both are mostly process start-up and imports, so on a
    small machine each takes a core, and Serve's start overlaps the generators', the base answers and round 0.
    ``swap_into_serve`` waits on the returned future before it publishes a round."""
    if not recipe.loop.serve:
        return None
    from prefloop.app.serving.serve import serve_run_dir

    starter = ThreadPoolExecutor(1, thread_name_prefix="serve-start")
    future = starter.submit(serve_run_dir, run.root, port=recipe.loop.serve_port)
    starter.shutdown(wait=False)
    return future


def wait_serving(serving: Future | None) -> None:
    """Wait for the Serve start of ``serve_latest_round``; its error, if any, is raised here."""
    if serving is not None:
        from prefloop.app.serving.serve import START_TIMEOUT_S

        # serve_run_dir bounds each of its waits; this bound is the backstop for the thread as a whole
        serving.result(timeout=START_TIMEOUT_S + 60)


def swap_into_serve(recipe: Recipe, model_dir: str, round_idx: int, serving: Future | None) -> float | None:
    """Hot-swap round ``round_idx``'s model into the Serve app (when serving is on, once its start, ``serving``,
    is done); returns the seconds."""
    if not recipe.loop.serve:
        return None
    from prefloop.app.serving.serve import checkpoint_step, publish

    wait_serving(serving)
    return publish(model_dir, round_idx, step=checkpoint_step(model_dir))["publish_s"]  # a ReMax step: its own id


def enter_activity(tel: Telemetry, name: str, round_idx: int | None) -> None:
    """The gauges (telemetry) and the console / heartbeat follow the stage the driver is in."""
    tel.activity(name)
    console.get().activity(name, round_idx)


def run_round(recipe: Recipe, run: RunDir, r: int, pool: GeneratorPool, eval_rows: list[dict], base: list[dict],
              tel: Telemetry, serving: Future | None = None) -> dict:
    """One round, built once (``Round``) and handed to each stage. Online (no ``train.data``): rollout with the
    current policy, then train on its pairs. Offline (``train.data``, e.g. the Snorkel partitions): train on that
    file, no rollout. On-policy (ReMax): the training workers sample through the pool themselves."""
    started = time.perf_counter()
    rnd = Round.build(recipe, run, r, pool)
    swap_in = ensure_model(pool, rnd.models.start)
    if rnd.recipe.train.data is None and not rnd.method.on_policy:
        enter_activity(tel, "rollout", r)
        run_rollout(rnd)
    t_rollout = time.perf_counter() - started
    enter_activity(tel, "train", r)
    model_dir = str(train_round(rnd, serving, tel))
    t_train = time.perf_counter() - started - t_rollout
    enter_activity(tel, "swap", r)
    swap_s = ensure_model(pool, model_dir)
    serve_swap_s = swap_into_serve(rnd.recipe, model_dir, r, serving)
    summary = round_summary(rnd, swap_s=swap_s or swap_in, serve_swap_s=serve_swap_s,
                            timings_s={"rollout": t_rollout, "train": t_train})
    if rnd.recipe.eval.leaderboard is not None:  # lm_eval's tasks on the committed model, into the eval manifest
        enter_activity(tel, "leaderboard", r)
        summary.update(leaderboard.round_figures(rnd, model_dir))
    enter_activity(tel, "eval", r)
    return evaluate.evaluate_round(rnd, eval_rows, base, summary, started)


def train_round(rnd: Round, serving: Future | None = None, tel: Telemetry | None = None) -> Path:
    """The round's training, by its method's driver: Ray Train on a fixed dataset, or ReMax's on-policy run
    (whose checkpoints Serve follows when it runs)."""
    if not rnd.method.on_policy:
        return run_train(rnd)
    follow = (lambda d: swap_into_serve(rnd.recipe, d, rnd.index, serving)) if rnd.recipe.loop.serve else None
    return run_remax(rnd, on_checkpoint=follow, on_step=tel.remax_step if tel is not None else None)


def run_loop(recipe: Recipe, allow_recipe_change: bool = False) -> list[dict]:
    """Run every round not yet committed; return the per-round eval manifests.

    The run directory is locked for the whole loop, and a resume must bring the recipe it was started with
    (``allow_recipe_change`` records a changed one instead; see ``app/storage/runlock.py``)."""
    if recipe.train is None:
        raise RecipeError("train: the round loop needs a train section in the recipe")
    recipe.check_round_prompts()  # each round reads its own prompts, unless data.reuse_prompts
    run = RunDir(recipe.run_dir)
    with hold_run(run, dump_recipe(recipe), allow_recipe_change):
        run.rebuild_metrics()  # a kill between a model commit and its metrics rows loses nothing
        return _run_rounds(recipe, run)


def _run_rounds(recipe: Recipe, run: RunDir) -> list[dict]:
    from transformers import AutoTokenizer

    rounds = range(recipe.loop.rounds)
    if all(run.is_committed(r, EVAL) for r in rounds):
        log.info("all %d rounds already committed", len(rounds))
        return report.write_report(recipe, run)
    con = console.get().attach(run.root, recipe.name, run.mirror.push_file if run.mirror else None)
    con.activity("setup", None)  # Ray, the generators' engines (and Serve) come up
    init_ray(recipe.resources)
    tel = Telemetry.start(recipe, run.root)  # Ray gauges + tracking
    eval_rows = evaluate.eval_prompts(recipe, AutoTokenizer.from_pretrained(recipe.policy.model)).rows
    serving = serve_latest_round(recipe, run)
    pool = start_pool(recipe, recipe.policy.model)
    try:
        with keep_scorers():  # scorer actors load once and serve every stage of every round
            enter_activity(tel, "base_answers", None)
            base = evaluate.base_answers(recipe, run, eval_rows, pool)
            for r in rounds:
                if run.is_committed(r, EVAL):
                    log.info("round %d already committed: skipping", r)
                    con.round_done(run.manifest(r, EVAL))
                    continue
                m = run_round(recipe, run, r, pool, eval_rows, base, tel, serving)
                log.info("round %d: %d pairs, win rate vs base %.3f (+-%.3f) by the eval judge (%s), %.3f by the "
                         "training scorer, mean length %.1f, swap %.3f s", r, m["pairs"], m["win_rate"],
                         m["win_rate_stderr"], m["judge"], m["scorer_win_rate"], m["mean_length"], m["swap_s"])
                tel.round_done(r, m)
                report.write_report(recipe, run)
                con.round_done(m)
            wait_serving(serving)  # served once the loop returns, even when every round was already committed
    finally:
        tel.close()
        pool.shutdown()
        con.detach()
    return report.write_report(recipe, run)

"""ReMax rounds (``train.method: remax``): on-policy RL whose training workers drive the generators themselves.

A round of the loop with method remax replaces rollout + training by one ReMax run:
1. the prompts are read and tokenised like a rollout's (rejected ones written with reasons);
2. a named scorer actor is started (the recipe's scorer: a scalar reward model in its own chat template, PairRM,
   or a user function); the round loop's long-lived generator actors already hold the start model;
3. ``TorchTrainer`` runs ``actors.remax_worker.remax_loop``: workers that stay up for every step, sample and
   greedy-decode through the generators, score, step, and push the weights back (``FailureConfig`` retries
   resume from the last checkpoint);
4. while it runs, the driver follows the steps and checkpoints: each step's metrics (rank 0 appends them to
   ``remax/steps.jsonl``) go to the dashboard gauges and the tracker, and each checkpoint rank 0 publishes under
   ``remax/published`` is hot-swapped into the Serve app when ``loop.serve`` is on, as the loop does with rounds;
5. the final model is committed atomically as the round's ``model`` stage, with the per-step metrics
   (``remax_metrics.jsonl``, also in ``RUN_DIR/metrics.jsonl``) and a manifest.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from prefloop.actors.common import actor_name
from prefloop.actors.model_cache import ship
from prefloop.app.dataflow.pipeline import kept_scorer_names, own_scorer_step
from prefloop.app.rounds.model_stage import commit_model
from prefloop.app.rounds.rollout import preflight, prepare_prompts
from prefloop.app.rounds.round import Round
from prefloop.app.rounds.train import fit
from prefloop.app.storage.rundir import MODEL, REMAX_WORK
from prefloop.core.config import Recipe, RecipeError
from prefloop.core.remax import remax_total_steps
from prefloop.core.worker_config import RemaxWorkerConfig

log = logging.getLogger(__name__)
PARTS = ("generate", "score", "train", "sync")


def check_recipe(recipe: Recipe, n_prompts: int) -> None:
    cfg = recipe.train
    if n_prompts == 0:
        raise RecipeError(f"data.train {recipe.data.train}: no usable prompts for ReMax")
    if cfg.remax.prompts_per_step < cfg.num_workers:
        raise RecipeError(f"train.remax.prompts_per_step={cfg.remax.prompts_per_step} is less than "
                          f"train.num_workers={cfg.num_workers}: every worker needs a prompt per step")
    if recipe.rollout.max_model_len < recipe.data.max_prompt_tokens + cfg.max_response_len:
        raise RecipeError(f"rollout.max_model_len={recipe.rollout.max_model_len} cannot hold "
                          f"data.max_prompt_tokens + train.max_response_len")


def follow_checkpoints(folder: Path, on_checkpoint: Callable[[str], Any], stop: threading.Event) -> None:
    """Publish every new ``step_*`` folder that has its ``done`` marker, oldest first, until ``stop``."""
    seen: set[str] = set()
    while True:
        ready = sorted((p for p in folder.glob("step_*") if (p / "done").exists() and p.name not in seen),
                       key=lambda p: int(p.name.split("_")[1]))
        for path in ready:
            seen.add(path.name)
            try:
                on_checkpoint(str(path))
            except Exception:  # serving must never fail training; the next checkpoint tries again
                log.exception("publishing ReMax checkpoint %s failed", path)
        if stop.wait(1.0):
            return


def follow_steps(steps_file: Path, on_step: Callable[[int, dict], Any], stop: threading.Event) -> None:
    """Feed each complete line rank 0 appends to ``steps_file`` (one step's metrics) to ``on_step``, until
    ``stop``; a last poll after ``stop`` catches the final steps."""
    offset, stopping = 0, False
    while not stopping:
        stopping = stop.wait(1.0)
        if not steps_file.exists():
            continue
        with open(steps_file, "rb") as f:
            f.seek(offset)
            for line in iter(f.readline, b""):
                if not line.endswith(b"\n"):  # a line being written: read it whole on the next poll
                    break
                offset += len(line)
                metrics = json.loads(line)
                on_step(int(metrics["step"]), metrics)


def run_remax(rnd: Round, on_checkpoint: Callable[[str], Any] | None = None,
              on_step: Callable[[int, dict], Any] | None = None,
              *, kill_at_step: int | None = None, kill_generator_at_step: int | None = None) -> Path:
    """Run (or skip, if committed) round ``rnd`` as ReMax, sampling through ``rnd.pool``; return the committed
    model folder.

    ``kill_at_step`` / ``kill_generator_at_step`` are for tests only: a training worker exits, or rank 0's
    generator actor is killed, once at that step, to exercise the resume and retry paths."""
    import ray
    from transformers import AutoTokenizer

    from prefloop.actors.remax_worker import remax_loop
    from prefloop.actors.scorer_pool import start_scorer

    recipe, run, round_idx, pool = rnd.recipe, rnd.run, rnd.index, rnd.pool
    cfg = recipe.train
    if rnd.is_committed(MODEL):
        log.info("round %d %s already committed: skipping", round_idx, MODEL)
        return rnd.stage_dir(MODEL)
    if pool is None:
        raise ValueError("run_remax: ReMax samples through a generator pool (Round.pool)")
    started = time.perf_counter()
    model_dir, ref_dir = rnd.models.start, rnd.models.reference
    preflight(recipe, model_dir)
    prepared = prepare_prompts(recipe, recipe.data.train, AutoTokenizer.from_pretrained(model_dir), round_idx)
    check_recipe(recipe, len(prepared.rows))
    total = remax_total_steps(len(prepared.rows), cfg.epochs, cfg.remax.prompts_per_step, cfg.remax.max_steps)
    work = run.round_dir(round_idx) / REMAX_WORK
    work.mkdir(parents=True, exist_ok=True)
    if pool.model != model_dir:
        pool.reload(ship(model_dir))
    timeout = recipe.resources.wait_timeout_s
    kept = kept_scorer_names(recipe)  # the round loop's kept scorer actors, else one of this round's own
    scorer = None
    if kept:
        scorer_name = kept[0]
    else:
        stage = own_scorer_step(recipe)
        scorer_name = actor_name("prefloop-remax-scorer")
        scorer = start_scorer(stage.cls, stage.kwargs, stage.num_cpus, stage.num_gpus, scorer_name, timeout,
                              stage.resources)
    worker = RemaxWorkerConfig(
        train=cfg, model_dir=ship(model_dir), dtype=recipe.policy.dtype, ref_dir=ship(ref_dir), seed=rnd.seed, total_steps=total, prompts=prepared.rows,
        generators=pool.names, scorer=scorer_name, timeout_s=timeout,
        weights_board=actor_name("prefloop-remax-weights", round_idx),  # this round's pushes
        sample_spec=asdict(rnd.sampling("remax_sample")), greedy_spec=asdict(rnd.sampling("remax_greedy")),
        publish_dir=str(work / "published") if on_checkpoint else None,
        steps_file=str(work / "steps.jsonl"), kill_at_step=kill_at_step,
        kill_generator_at_step=kill_generator_at_step, fault_marker=str(work / "fault-injected"))
    log.info("round %d: ReMax on %d prompts, %d steps of %d prompts, %d workers", round_idx, len(prepared.rows),
             total, cfg.remax.prompts_per_step, cfg.num_workers)
    stop = threading.Event()
    followers = []
    if on_step is not None:
        followers.append(threading.Thread(target=follow_steps, args=(work / "steps.jsonl", on_step, stop),
                                          daemon=True))
    if on_checkpoint is not None:
        followers.append(threading.Thread(target=follow_checkpoints, args=(work / "published", on_checkpoint, stop),
                                          daemon=True))
    for follower in followers:
        follower.start()
    storage = run.train_storage(round_idx, REMAX_WORK)
    try:
        result = fit(None, worker, cfg, storage, loop=remax_loop, placement=recipe.resources.custom("train"))
    finally:
        stop.set()
        if scorer is not None:
            ray.kill(scorer)
        try:  # the round's pushed weights are not needed any more
            ray.kill(ray.get_actor(worker.weights_board))
        except ValueError:
            pass  # no worker created it
        for follower in followers:
            follower.join(timeout=60)
    manifest = {"method": "remax", "start_model": model_dir, "reference": ref_dir,
                "counts": {"read": prepared.read.read, "accepted": len(prepared.read.accepted),
                           "rejected": len(prepared.read.rejected), "prompts": len(prepared.rows)},
                "steps": {"planned": total}, "train": cfg.model_dump(mode="json"), "checkpoint_storage": storage}
    committed = commit_model(run, round_idx, result.checkpoint, chat_template=recipe.policy.chat_template,
                             rejected=[r.to_dict() for r in prepared.read.rejected],
                             metrics_file="remax_metrics.jsonl", manifest=manifest,
                             summarize=lambda history: {"timings_s": {
                                 **{p: sum(m.get(f"{p}_s", 0.0) for m in history) for p in PARTS},
                                 "total": time.perf_counter() - started}})
    log.info("round %d: ReMax model committed after %d steps (restored from %s)", round_idx,
             committed["steps"]["done"], committed["steps"]["restored_from"] or "none")
    final = run.stage_dir(round_idx, MODEL)
    # The engines (and Serve) hold weights from folders about to be removed: move them to the committed model.
    pool.reload(ship(final))
    if on_checkpoint is not None:
        on_checkpoint(str(final))
    run.drop_train_storage(round_idx, REMAX_WORK)  # checkpoints and pushed weights of a committed round
    return final

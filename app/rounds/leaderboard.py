"""The per-round leaderboard step (``eval.leaderboard``): lm_eval's tasks on the round's committed model.

After round R's model is committed and swapped in, one Ray task (``actors/leaderboard_eval.py``, with the
recipe's ``num_cpus`` / ``num_gpus``, so it lands on a cluster node with a free GPU) copies the model to its node
and runs the tasks with their few-shot counts; the driver waits at most ``timeout_s`` and cancels the task
after that. The results are committed as ``round_R/leaderboard/`` (``results.json``: lm_eval's merged results;
``manifest.json``), so a resumed run does not score a model twice, and the figures (``leaderboard``,
``leaderboard_average``, ``leaderboard_s``: ``core/leaderboard.py``) go into the round's eval manifest, beside
the win rates, and from there into the report.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prefloop.app.rounds.round import Round
from prefloop.app.storage.rundir import LEADERBOARD, write_manifest
from prefloop.core.config import Recipe
from prefloop.core.leaderboard import LeaderboardConfig, figures

log = logging.getLogger(__name__)
MANIFEST_KEYS = ("leaderboard", "leaderboard_average", "leaderboard_s")


def task_spec(recipe: Recipe, cfg: LeaderboardConfig) -> dict[str, Any]:
    """What the Ray task needs, as plain data."""
    return {"tasks": {name: t.num_fewshot for name, t in cfg.tasks.items()}, "include_path": cfg.include_path,
            "limit": cfg.limit, "backend": cfg.backend, "model_args": dict(cfg.model_args),
            "batch_size": cfg.batch_size, "num_gpus": cfg.num_gpus, "dtype": recipe.policy.dtype}


def run_on_cluster(recipe: Recipe, cfg: LeaderboardConfig, model_dir: str) -> dict[str, Any]:
    """lm_eval's merged results for ``model_dir``, from one Ray task; a TimeoutError (the task cancelled) after
    ``cfg.timeout_s``."""
    import ray

    from prefloop.actors.common import ray_get
    from prefloop.actors.leaderboard_eval import run_task
    from prefloop.actors.model_cache import ship

    task = ray.remote(run_task).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, max_retries=0,
                                        name="prefloop-leaderboard")
    ref = task.remote(task_spec(recipe, cfg), ship(model_dir))
    try:
        return ray_get(ref, cfg.timeout_s, f"leaderboard (lm_eval {', '.join(cfg.tasks)}) on {model_dir}")
    except TimeoutError:
        ray.cancel(ref, force=True)  # its GPU is free for the next round
        raise


def round_figures(rnd: Round, model_dir: str) -> dict[str, Any]:
    """The round's leaderboard keys for its eval manifest: ``{}`` without ``eval.leaderboard``; read back from
    ``round_R/leaderboard`` when it is committed, else run and committed first."""
    cfg = rnd.recipe.eval.leaderboard
    if cfg is None:
        return {}
    run, r = rnd.run, rnd.index
    if not run.is_committed(r, LEADERBOARD):
        started = time.perf_counter()
        results = run_on_cluster(rnd.recipe, cfg, model_dir)
        figs = {**figures(cfg, results), "leaderboard_s": time.perf_counter() - started}
        with run.commit(r, LEADERBOARD) as out:
            (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
            write_manifest(out, {"stage": LEADERBOARD, "round": r, "model": model_dir,
                                 "lm_eval_version": results.get("lm_eval_version"), **figs})
        log.info("round %d: leaderboard average %.2f over %s (%.0f s)", r, figs["leaderboard_average"],
                 ", ".join(cfg.tasks), figs["leaderboard_s"])
    manifest = run.manifest(r, LEADERBOARD)
    return {key: manifest[key] for key in MANIFEST_KEYS}

"""The one-round commands (``prefloop rollout|train RECIPE --round R``): one stage of round R, as ``prefloop run``
runs it.

Each builds the same ``Round`` the loop builds (``app/rounds/round.py``) and runs the recipe's checks that the loop
runs, so round R means the same thing here as there. A ReMax round has no separate rollout: its training workers
sample through a generator pool, which ``train_one`` starts on the round's start model.
"""

from __future__ import annotations

from pathlib import Path

from prefloop.app.dataflow.runtime import init_ray
from prefloop.app.rounds.loop import start_pool, train_round
from prefloop.app.rounds.rollout import run_rollout
from prefloop.app.rounds.round import Round
from prefloop.app.storage.rundir import RunDir
from prefloop.core.config import Recipe, RecipeError


def build_round(recipe: Recipe, index: int) -> Round:
    """Round ``index`` of ``recipe``, after the checks ``prefloop run`` makes before its first round."""
    recipe.check_round_prompts()  # each round reads its own prompts, unless data.reuse_prompts
    return Round.build(recipe, RunDir(recipe.run_dir), index)


def rollout_one(recipe: Recipe, index: int) -> Path:
    """``prefloop rollout --round R``: round R's rollout stage (sampled with a fresh actor pool)."""
    rnd = build_round(recipe, index)
    if rnd.method.on_policy:
        raise RecipeError(f"round {index} trains with method '{rnd.method.name}', which samples inside its "
                          "training run: use `prefloop train --round R`")
    return run_rollout(rnd)


def train_one(recipe: Recipe, index: int, *, kill_at_step: int | None = None) -> Path:
    """``prefloop train --round R``: round R's model stage, by the round's method (ReMax included)."""
    rnd = build_round(recipe, index)
    if not rnd.method.on_policy:
        from prefloop.app.rounds.train import run_train

        return run_train(rnd, kill_at_step=kill_at_step)
    init_ray(rnd.recipe.resources)
    rnd.pool = start_pool(rnd.recipe, rnd.models.start)
    try:
        return train_round(rnd)
    finally:
        rnd.pool.shutdown()

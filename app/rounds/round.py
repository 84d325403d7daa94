"""One round, built once: what round R of a recipe is, handed to its rollout, training, swap and evaluation.

``Round.build`` resolves everything a round's stages share, in one place:
- the round's own recipe (``loop.methods[R]`` replaces ``train.method`` when the recipe gives per-round methods);
- its run directory handle, and its start and reference models, ``Round.models`` (round R-1's committed model,
  the base for R = 0; the reference is that same model under ``train.reference: previous``, the cards' choice, or
  always the base; None for a method that trains against no reference);
- its training method from the registry (``core/methods.py``), its seed, and the vLLM engine settings;
- the generator pool that samples for it (the round loop's long-lived one; None for a one-round command that
  starts a fresh actor pool per stage).

The round loop builds it once per round (``app/rounds/loop.py``), and so do ``prefloop rollout/train --round R``
(``app/rounds/one_round.py``), so a one-round command cannot mean something else than the loop's round R.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefloop.app.storage.rundir import MODEL, RunDir
from prefloop.core.config import Recipe, RecipeError
from prefloop.core.methods import Method, method
from prefloop.core.round_settings import EngineSettings, Purpose, sampling
from prefloop.core.sampling import SampleSpec

if TYPE_CHECKING:
    from prefloop.actors.generator_pool import GeneratorPool


@dataclass(frozen=True)
class RoundModels:
    start: str  # the policy the round starts from (and samples with)
    reference: str | None  # the frozen model its KL / log-ratio terms are taken against; None: its method has none


def round_recipe(recipe: Recipe, index: int) -> Recipe:
    """The recipe as round ``index`` sees it: ``loop.methods[index]`` replaces ``train.method`` when given."""
    if recipe.train is None:
        raise RecipeError("train: a round needs a train section in the recipe (e.g. `train: {method: dpo}`)")
    if recipe.loop.methods is None:
        return recipe
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"method": recipe.loop.methods[index]})})


def round_models(run: RunDir, recipe: Recipe, index: int) -> RoundModels:
    """Round ``index``'s start model and reference (see the module docstring); no reference for a method that
    trains against none (SFT, conditional SFT)."""
    if index == 0:
        start = recipe.policy.model
    elif run.is_committed(index - 1, MODEL):
        start = str(run.stage_dir(index - 1, MODEL))
    else:
        raise FileNotFoundError(f"round {index} starts from round {index - 1}'s model, which is not "
                                f"committed ({run.stage_dir(index - 1, MODEL)}): train that round first")
    if not method(recipe.train.method).needs_reference:
        return RoundModels(start, None)
    return RoundModels(start, start if recipe.train.reference == "previous" else recipe.policy.model)


@dataclass
class Round:
    """Round ``index`` of a run (see the module docstring); ``recipe`` is the round's own."""

    index: int
    recipe: Recipe
    run: RunDir
    models: RoundModels
    method: Method
    engine: EngineSettings
    pool: GeneratorPool | None = None

    @classmethod
    def build(cls, recipe: Recipe, run: RunDir, index: int, pool: GeneratorPool | None = None) -> "Round":
        if not 0 <= index < recipe.loop.rounds:
            raise RecipeError(f"--round {index}: the recipe has rounds 0..{recipe.loop.rounds - 1} (loop.rounds)")
        mine = round_recipe(recipe, index)
        return cls(index, mine, run, round_models(run, mine, index), method(mine.train.method),
                   EngineSettings.of(mine), pool)

    @classmethod
    def of(cls, recipe: Recipe, index: int = 0, pool: GeneratorPool | None = None) -> "Round":
        """``build`` on the recipe's own run directory."""
        return cls.build(recipe, RunDir(recipe.run_dir), index, pool)

    @property
    def seed(self) -> int:
        """The training seed: ``train.seed``, else the recipe's."""
        return self.recipe.seed if self.recipe.train.seed is None else self.recipe.train.seed

    def sampling(self, purpose: Purpose) -> SampleSpec:
        return sampling(self.recipe, purpose)

    def stage_dir(self, stage: str) -> Path:
        return self.run.stage_dir(self.index, stage)

    def is_committed(self, stage: str) -> bool:
        return self.run.is_committed(self.index, stage)

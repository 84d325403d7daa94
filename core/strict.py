"""The base of every recipe section: a pydantic model where unknown keys and bad values are errors naming the key.

Kept apart from ``core/config.py`` so each section's module (``train_config``, ``judge_config``) and the recipe
that composes them import it without importing each other.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class RecipeError(ValueError):
    """A recipe that cannot be loaded: the message names the file and the key."""


class StrictModel(BaseModel):
    """Unknown keys are errors; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


ChatTemplate = Literal["tokenizer", "tulu", "mistral", "ultrarm"]

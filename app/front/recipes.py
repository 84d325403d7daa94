"""A recipe file resolved for a command: its placeholders filled, its tiny models built and its real models
imported when it names them.

Placeholders: ``{assets}`` (the tiny assets dir: $PREFLOOP_ASSETS or ~/.cache/prefloop/assets), ``{data}`` (the
prompt files shipped with prefloop) and the imported models' names (``{smollm2}``, ``app/models/catalog.py``).
"""

from __future__ import annotations

from prefloop.core.config import Recipe, load_recipe
from prefloop.tinyworld.topics import DATA_DIR  # the {data} placeholder: the prompt files shipped with prefloop


def placeholders() -> dict[str, str]:
    """The placeholders a recipe's paths may use, and what they stand for here."""
    from prefloop.app.models.catalog import model_placeholders
    from prefloop.tinyworld.assets import default_assets_dir

    return {"assets": str(default_assets_dir()), "data": str(DATA_DIR), **model_placeholders()}


def resolve_recipe(path: str, overrides: list[str], tiny: bool = False) -> Recipe:
    """Load and validate a recipe (``tiny``: with its tiny section); build the tiny assets and import the models
    it names (see the module docstring)."""
    from prefloop.app.models.catalog import ensure_models
    from prefloop.tinyworld.assets import build_assets, default_assets_dir, parts_used

    assets_dir = default_assets_dir()
    recipe = load_recipe(path, overrides, placeholders(), tiny=tiny)
    if recipe.assets == "tiny":  # the parts its paths name (the demo: policy and PairRM)
        build_assets(assets_dir, parts=parts_used(recipe.model_dump(), assets_dir))
    ensure_models(recipe.model_dump())  # {smollm2}: imported from its package on first use
    return recipe

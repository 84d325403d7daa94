"""Pure converters from the public datasets' own schemas to prefloop's rows (TRL's column conventions).

    prompts  prompt_id, prompt, messages                     (rollout input)
    prefs    prompt_id, prompt, messages, chosen, rejected    (DPO)
    kto      prompt_id, prompt, messages, completion, label   (KTO, unpaired)

Each ``*_row`` function takes one source row (a dict, as ``datasets`` or pyarrow give it) and returns the
rows it becomes, or raises ``ValueError("field: reason")``; ``convert`` runs one over a source and collects
kept rows and rejected rows (``prompts.Rejected``: file, row, field, reason). No I/O here, no ``datasets``.

Schemas (from the datasets' cards):
- HuggingFaceH4/ultrafeedback_binarized, splits train_prefs/test_prefs/train_sft/...: prompt, prompt_id,
  chosen/rejected/messages (conversations that END with the assistant's turn), score_chosen, score_rejected.
  Only the prompt is taken: ``messages`` is a training conversation, not a prompt.
- openbmb/UltraFeedback, split train: source, instruction, models, completions[...]: ``instruction``.
- snorkelai/Snorkel-Mistral-PairRM-DPO-Dataset, splits train_iteration_1..3 / test_iteration_1..3: prompt_id,
  prompt, chosen/rejected ([user, assistant] conversations), all_generated_responses, all_rm_scores.
- lmsys/lmsys-chat-1m, split train: conversation_id, model, conversation [{role, content}], turn, language,
  openai_moderation (per message), redacted.
- tatsu-lab/alpaca_eval, config alpaca_eval, split eval (805 rows): instruction, output, generator, dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from prefloop.core.prompts import Rejected, derive_prompt_id

Row = dict[str, Any]
SourceRow = tuple[str, str, Any]  # (file or split, "row 12", the row or an exception from reading it)


@dataclass
class Converted:
    """What a converter made of a source: kept rows and rejected rows (``read = kept_rows + rejected``)."""

    rows: list[Row] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    kept_rows: int = 0  # source rows that produced at least one output row


def text(row: Any, name: str) -> str:
    """A non-empty string field, or ValueError naming it."""
    if not isinstance(row, dict):
        raise ValueError(f"(row): expected an object, got {type(row).__name__}")
    if name not in row or row[name] is None:
        raise ValueError(f"{name}: missing")
    value = row[name]
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name}: empty")
    return value


def prompt_row(prompt: str, prompt_id: Any = None, **extra: Any) -> Row:
    """A one-turn prompt row; the id is the source's when it has one, else derived from the content."""
    messages = [{"role": "user", "content": prompt}]
    if prompt_id is not None and (not isinstance(prompt_id, (str, int)) or not str(prompt_id).strip()):
        raise ValueError(f"prompt_id: must be a non-empty string, got {prompt_id!r}")
    pid = str(prompt_id) if prompt_id is not None else derive_prompt_id(messages)
    return {"prompt_id": pid, "prompt": prompt, "messages": messages, **extra}


def assistant_reply(conversation: Any, name: str) -> str:
    """The final assistant turn of a TRL-style conversation ([user, ..., assistant])."""
    if isinstance(conversation, str):
        if not conversation.strip():
            raise ValueError(f"{name}: empty")
        return conversation
    if not isinstance(conversation, list) or not conversation:
        raise ValueError(f"{name}: must be a non-empty list of {{role, content}}, got {type(conversation).__name__}")
    last = conversation[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise ValueError(f"{name}: the last message must be the assistant's")
    content = last.get("content")
    if not isinstance(content, str) or not content.strip():
        raise ValueError(f"{name}: the assistant's reply is empty or not a string")
    return content


def ultrafeedback_prompt_row(row: Any) -> list[Row]:
    """ultrafeedback_binarized (prompt, prompt_id) or openbmb/UltraFeedback (instruction) -> one prompt row."""
    if isinstance(row, dict) and "prompt" not in row and "instruction" in row:
        return [prompt_row(text(row, "instruction"), source=row.get("source"))]
    return [prompt_row(text(row, "prompt"), row.get("prompt_id"))]


def snorkel_pair_row(row: Any) -> list[Row]:
    """One Snorkel row -> a prefs row (PairRM's top vs bottom of the 5 samples)."""
    prompt = text(row, "prompt")
    chosen, rejected = assistant_reply(row.get("chosen"), "chosen"), assistant_reply(row.get("rejected"), "rejected")
    if chosen.strip() == rejected.strip():
        raise ValueError("rejected: identical to chosen (no preference to learn)")
    out = prompt_row(prompt, row.get("prompt_id"))
    return [{**out, "chosen": chosen, "rejected": rejected}]


def lmsys_first_turn_row(row: Any, language: str = "English", allow_flagged: bool = False) -> list[Row]:
    """The first user turn of an lmsys-chat-1m conversation, if English and not flagged by OpenAI moderation.

    Filters (the project's choice; the ReMax card says only "10k lmsys-chat-1m prompts"): ``language`` as
    labelled by the dataset; the first turn not flagged by its ``openai_moderation`` entry; later turns are
    dropped (they depend on an answer the policy did not write). Redacted (PII-replaced) prompts are kept."""
    if not isinstance(row, dict):
        raise ValueError(f"(row): expected an object, got {type(row).__name__}")
    if row.get("language") != language:
        raise ValueError(f"language: {row.get('language')!r}, not {language!r}")
    conversation = row.get("conversation")
    if not isinstance(conversation, list) or not conversation:
        raise ValueError("conversation: must be a non-empty list of {role, content}")
    first = conversation[0]
    if not isinstance(first, dict) or first.get("role") != "user":
        raise ValueError("conversation: the first message is not the user's")
    prompt = text(first, "content")
    moderation = row.get("openai_moderation")
    if not allow_flagged and isinstance(moderation, list) and moderation and isinstance(moderation[0], dict) \
            and moderation[0].get("flagged"):
        raise ValueError("openai_moderation: the first turn is flagged")
    return [prompt_row(prompt, conversation_id=row.get("conversation_id"))]


def alpaca_eval_row(row: Any) -> list[Row]:
    """An AlpacaEval instruction -> a held-out prompt row (its reference output and subset kept beside)."""
    return [prompt_row(text(row, "instruction"), dataset=row.get("dataset"), reference_output=row.get("output"),
                       reference_generator=row.get("generator"))]


def convert(rows: Iterable[SourceRow], fn: Callable[[Any], list[Row]]) -> Converted:
    """Run a row converter over a source; a ValueError rejects that row with its field and reason."""
    out = Converted()
    for file, loc, row in rows:
        try:
            if isinstance(row, Exception):
                raise ValueError(f"(line): {row}")
            made = fn(row)
        except ValueError as err:
            name, _, reason = str(err).partition(": ")
            out.rejected.append(Rejected(file, loc, name, reason, _raw(row)))
            continue
        for r in made:
            r["source_row"] = f"{file}:{loc}"
        out.rows.extend(made)
        out.kept_rows += 1
    return out


def _raw(row: Any) -> str:
    if isinstance(row, Exception) and isinstance(getattr(row, "raw", None), str):
        return row.raw[:500]  # a line that did not parse: the line as read, not the error
    try:
        return json.dumps(row, ensure_ascii=False, default=str)[:500]
    except (TypeError, ValueError):
        return repr(row)[:500]


def drop_duplicates(conv: Converted, key: Callable[[Row], str], what: str) -> Converted:
    """Keep the first row of each key; later ones are rejected naming the row they repeat."""
    seen: dict[str, str] = {}
    out = Converted(kept_rows=conv.kept_rows, rejected=list(conv.rejected))
    for r in conv.rows:
        k = key(r)
        if k in seen:
            file, _, loc = r["source_row"].rpartition(":")
            out.rejected.append(Rejected(file, loc, "prompt", f"duplicate {what} of {seen[k]}", _raw(r)))
            out.kept_rows -= 1
            continue
        seen[k] = r["source_row"]
        out.rows.append(r)
    return out


def prompt_text_key(r: Row) -> str:
    """Duplicate prompts are the same conversation after trimming whitespace, whatever their given ids."""
    return derive_prompt_id([{**m, "content": m["content"].strip()} for m in r["messages"]])

"""Training rows: validating a round's data and shaping it for one method. Pure; no torch, no ray.

Three input kinds, in TRL's column conventions, detected from the columns:
    prefs  prompt | messages, chosen, rejected        (the rollout's pairs.parquet, UltraFeedback-style files)
    kto    prompt | messages, completion, label       (the rollout's kto.parquet, Snorkel/Contextual KTO files)
    sft    prompt | messages, completion
Every row is accepted or rejected with file, row, field and reason (``prompts.Rejected``): empty or identical
chosen/rejected, a label that is not a boolean, a bad conversation. Nothing is dropped silently.

Methods take what they can use: DPO needs prefs; KTO takes kto rows, or prefs split into a desirable chosen
and an undesirable rejected; SFT takes sft rows, prefs' chosen, or kto's desirable completions; conditional
SFT (Archangel) takes labelled rows (kto, or prefs as good/bad).

Conditional SFT: ``<|good|>`` / ``<|bad|>`` is put between the prompt and the response, by label. It counts as
part of the prompt (it is given, not predicted: no loss on it), so at generation time ``prompt + <|good|>``
asks for a desirable answer (``generation_prompt``).

KTO's reference point z is estimated from mismatched (prompt, completion) pairs. The pairing is fixed here,
once per round (``kl_partners``), so the reference log-probs of those pairs can be precomputed too. Unlike
a plain rotation, it never pairs a prompt with a completion of the same prompt (the rollout writes a prompt's
desirable and undesirable rows next to each other).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from prefloop.core.methods import method as method_of
from prefloop.core.prompts import Fields, InputError, Rejected, _iter_source, derive_prompt_id
from prefloop.core.templates import CONTROL_TOKENS, validate_messages

GOOD, BAD = CONTROL_TOKENS
KIND_COLUMNS = {"prefs": ("chosen", "rejected"), "kto": ("completion", "label"), "sft": ("completion",)}


class TrainDataError(InputError):
    """Training data that cannot be used at all (no rows, wrong columns for the method)."""


@dataclass
class TrainRows:
    kind: str
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def detect_kind(columns: Iterable[str], source: str) -> str:
    """'prefs', 'kto' or 'sft' from a table's columns; TrainDataError naming the columns otherwise."""
    cols = set(columns)
    for kind in ("prefs", "kto", "sft"):
        if all(c in cols for c in KIND_COLUMNS[kind]):
            return kind
    raise TrainDataError(f"{source}: cannot tell the data kind from columns {sorted(cols)}: expected "
                         "chosen/rejected (preferences), completion/label (KTO) or completion (SFT)")


def _text(row: dict[str, Any], name: str) -> str:
    """A response field: a non-empty string, or a conversation whose last message is the assistant's."""
    value = row.get(name)
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1].get("content")  # TRL's conversational format: [{"role": "assistant", ...}]
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name}: empty")
    return value


def _messages(row: dict[str, Any]) -> list[dict[str, str]]:
    if row.get("messages") is not None:
        messages = row["messages"]
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError as err:
                raise ValueError(f"messages: not valid JSON: {err.msg}") from None
        try:
            messages = validate_messages(messages)
        except ValueError as err:
            raise ValueError(f"messages: {err}") from None
    elif isinstance(row.get("prompt"), str):
        messages = [{"role": "user", "content": row["prompt"]}]
    else:
        raise ValueError(f"prompt: must be a string (or give 'messages'), got {type(row.get('prompt')).__name__}")
    if not any(m["content"].strip() for m in messages if m["role"] == "user"):
        raise ValueError("prompt: empty")
    return messages


def check_row(row: Any, kind: str) -> dict[str, Any]:
    """One raw row -> a clean row of ``kind``; ValueError('field: reason') otherwise."""
    if isinstance(row, Exception):
        raise ValueError(f"(line): {row}")
    if not isinstance(row, dict):
        raise ValueError(f"(line): expected an object, got {type(row).__name__}")
    messages = _messages(row)
    given = row.get("prompt_id")
    clean: dict[str, Any] = {"prompt_id": str(given) if given not in (None, "") else derive_prompt_id(messages),
                             "messages": messages}
    if kind == "prefs":
        clean["chosen"], clean["rejected"] = _text(row, "chosen"), _text(row, "rejected")
        if clean["chosen"].strip() == clean["rejected"].strip():
            raise ValueError("rejected: identical to chosen (no preference to learn)")
    else:
        clean["completion"] = _text(row, "completion")
    if kind == "kto":
        label = row.get("label")
        if not isinstance(label, bool):  # 1/0, "true", None: ambiguous, refused rather than guessed
            raise ValueError(f"label: must be a boolean, got {label!r}")
        clean["label"] = label
    return clean


def validate_rows(rows: Iterable[tuple[str, str, Any, str]], kind: str) -> TrainRows:
    """(file, location, row, raw) tuples -> accepted clean rows and rejected rows with reasons."""
    out = TrainRows(kind)
    for file, loc, row, raw in rows:
        try:
            out.accepted.append(check_row(row, kind))
        except ValueError as err:
            name, _, reason = str(err).partition(": ")
            out.rejected.append(Rejected(file, loc, name, reason, raw or json.dumps(row, default=str)[:500]))
    return out


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as err:  # pyarrow raises several types for a bad file
        raise TrainDataError(f"{path}: not a readable Parquet file: {err}") from None


def read_train_rows(path: str | Path, kind: str | None = None) -> TrainRows:
    """Read and validate a training file (JSONL, Parquet, dataset dir); the kind is detected if not given."""
    path = Path(path)
    if not path.exists():
        raise TrainDataError(f"{path}: training data file not found")
    if path.suffix == ".parquet" and _parquet_rows(path) == 0:
        raise TrainDataError(f"{path}: the training data has no rows")
    raw = list(_iter_source(path, Fields()))
    if not raw:
        raise TrainDataError(f"{path}: the training data has no rows")
    if kind is None:
        first = next((r for _, _, r, _ in raw if isinstance(r, dict)), None)
        if first is None:
            raise TrainDataError(f"{path}: no readable row (first problem: {raw[0][2]})")
        kind = detect_kind(first.keys(), str(path))
    return validate_rows(raw, kind)


def to_examples(rows: Sequence[dict[str, Any]], kind: str, method: str) -> list[dict[str, Any]]:
    """Clean rows of ``kind`` -> the examples ``method`` trains on (see the module docstring)."""
    takes = method_of(method).data_kinds
    if kind not in takes:
        raise TrainDataError(f"method '{method}' cannot train on {kind} data (it takes: {takes})")
    base = [{"prompt_id": r["prompt_id"], "messages": r["messages"]} for r in rows]
    if method == "dpo":
        return [{**b, "chosen": r["chosen"], "rejected": r["rejected"]} for b, r in zip(base, rows)]
    if kind == "prefs" and method in ("kto", "csft"):
        return [{**b, "completion": r[k], "label": label}
                for b, r in zip(base, rows) for k, label in (("chosen", True), ("rejected", False))]
    if method == "sft":
        if kind == "prefs":
            return [{**b, "completion": r["chosen"]} for b, r in zip(base, rows)]
        return [{**b, "completion": r["completion"]} for b, r in zip(base, rows) if r.get("label", True)]
    return [{**b, "completion": r["completion"], "label": r["label"]} for b, r in zip(base, rows)]


def control_token(label: bool) -> str:
    return GOOD if label else BAD


def generation_prompt(prompt_text: str) -> str:
    """What a conditional-SFT model is asked at generation time: the prompt followed by <|good|>."""
    return prompt_text + GOOD


def add_prompt_text(examples: list[dict[str, Any]], method: str, render: Callable[[list], str]) -> None:
    """Set ``prompt_text`` (the chat-templated prompt; csft: + its control token) on every example, in place."""
    for ex in examples:
        text = render(ex["messages"])
        ex["prompt_text"] = text + control_token(ex["label"]) if method == "csft" else text


def kl_partners(prompt_ids: Sequence[str], seed: int) -> list[int]:
    """For each example i, the index j of another example whose completion it meets in KTO's z estimate.

    A seeded rotation of a shuffled order, skipping partners with the same prompt_id. If every example
    shares one prompt, there is no mismatched pair to be had: TrainDataError.
    """
    n = len(prompt_ids)
    if n < 2 or len(set(prompt_ids)) < 2:
        raise TrainDataError("KTO needs examples of at least 2 different prompts to estimate its reference point")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partners = [0] * n
    for pos, i in enumerate(order):
        for shift in range(1, n):
            j = order[(pos - shift) % n]
            if prompt_ids[j] != prompt_ids[i]:
                partners[i] = j
                break
    return partners


def add_kl_completions(examples: list[dict[str, Any]], seed: int) -> None:
    """KTO: give each example the ``kl_completion`` of its partner (``kl_partners``), in place."""
    partners = kl_partners([ex["prompt_id"] for ex in examples], seed)
    for ex, j in zip(examples, partners):
        ex["kl_completion"] = examples[j]["completion"]


def shuffled(examples: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """A seeded shuffle (the training order); the input list is left as it is."""
    out = list(examples)
    random.Random(seed).shuffle(out)
    return out


def worker_order(ids: list[int], seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """The example ids worker ``rank`` trains in ``epoch``, in order: a permutation seeded by (seed, epoch),
    cut to a multiple of ``world`` (every worker the same count, as ``plan_steps`` assumes), dealt round-robin.
    Fixed by the seed alone, so a restarted worker group resumes on exactly the examples not yet trained."""
    order = sorted(ids)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    keep = len(order) // world * world
    return order[:keep][rank::world]

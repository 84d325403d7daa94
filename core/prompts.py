"""Prompt records from JSONL, Parquet, or a local Hugging Face dataset directory: the checks every row passes.

Every input row ends up either accepted (a ``PromptRecord``) or rejected (a ``Rejected`` naming the file,
the line or row, the field, and the reason). Nothing is dropped silently: ``read = accepted + rejected``.

A record's ``prompt_id`` is the given one, or derived from its content (a hash of the conversation), so the
same prompt keeps the same id from input to pairs, across runs and resumes; duplicates are rejected rather
than counted twice. A file-level problem (missing file, no prompt column) is an ``InputError``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from prefloop.core.prompt_files import Fields, InputError, Source, iter_rows, plan_sources
from prefloop.core.templates import last_user_text, validate_messages

__all__ = ["Fields", "InputError", "PromptRecord", "ReadResult", "Rejected", "check_row", "derive_prompt_id",
           "read_prompts"]


@dataclass
class PromptRecord:
    prompt_id: str
    messages: list[dict[str, str]]
    prompt: str  # the last user turn, what PairRM-style judges read
    source: str  # "file:line" or "file:row", for error messages downstream
    field: str = ""  # the field the prompt came from (prompt or messages), named when it is rejected later


@dataclass
class Rejected:
    file: str
    location: str  # "line 7" or "row 12"
    field: str
    reason: str
    raw: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "location": self.location, "field": self.field,
                "reason": self.reason, "raw": self.raw[:500]}


@dataclass
class ReadResult:
    accepted: list[PromptRecord] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def read(self) -> int:
        return len(self.accepted) + len(self.rejected)


def derive_prompt_id(messages: list[dict[str, str]]) -> str:
    """A stable id from the conversation's content: the same prompt gets the same id in every run."""
    canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "p" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _row_to_messages(row: dict[str, Any], fields: Fields) -> tuple[list[dict[str, str]], str]:
    """Return (messages, field used) or raise ValueError naming the field."""
    if row.get(fields.messages) is not None:
        try:
            return validate_messages(row[fields.messages]), fields.messages
        except ValueError as err:
            raise ValueError(f"{fields.messages}: {err}") from None
    if fields.prompt not in row:
        raise ValueError(f"{fields.prompt}: missing (and no '{fields.messages}')")
    prompt = row[fields.prompt]
    if not isinstance(prompt, str):
        raise ValueError(f"{fields.prompt}: must be a string, got {type(prompt).__name__}")
    return [{"role": "user", "content": prompt}], fields.prompt


def check_row(file: str, location: str, row: Any, raw: str, fields: Fields = Fields()) -> PromptRecord | Rejected:
    """One row as a record, or rejected naming the field and why (all but the duplicate and token checks,
    which need the other rows and the tokenizer)."""

    def reject(field_name: str, reason: str) -> Rejected:
        return Rejected(file, location, field_name, reason, raw_text(row, raw))

    if isinstance(row, Exception):
        return reject("(line)", str(row))
    if not isinstance(row, dict):
        return reject("(line)", f"expected a JSON object, got {type(row).__name__}")
    try:
        messages, used = _row_to_messages(row, fields)
    except ValueError as err:
        name, _, reason = str(err).partition(": ")
        return reject(name, reason)
    if not all(m["content"].strip() for m in messages if m["role"] == "user"):
        return reject(used, "empty prompt")
    given = row.get(fields.id)
    if given is not None and (not isinstance(given, (str, int)) or str(given).strip() == ""):
        return reject(fields.id, f"must be a non-empty string or integer, got {given!r}")
    prompt_id = str(given) if given is not None else derive_prompt_id(messages)
    return PromptRecord(prompt_id, messages, last_user_text(messages), f"{file}:{location}", used)


def raw_text(row: Any, raw: str) -> str:
    """What a rejected record shows of its row: the line as read, or a table row as JSON."""
    return raw or json.dumps(row, default=str)[:500]


def duplicate_reason(prompt_id: str, first: str | None = None) -> str:
    where = f" as {first}" if first else " as an earlier row"
    return f"duplicate prompt_id {prompt_id!r} (same id or same content{where})"


def read_prompts(path: str | Path, fields: Fields = Fields(),
                 too_long: Callable[[list[dict[str, str]]], str | None] | None = None) -> ReadResult:
    """Read every row of a prompt source into accepted records and rejected rows, on this process.

    ``too_long(messages)`` returns a reason when the rendered prompt exceeds the token budget (the caller
    owns the tokenizer), or None. (The rollout reads its prompts in Ray Data instead, ``app/rounds/rollout_stream.py``,
    with the same checks.)
    """
    result, seen = ReadResult(), set()
    for source in plan_sources(path, fields):
        for number, row, raw in iter_rows(source):
            loc = source.location(number)
            checked = check_row(source.file, loc, row, raw, fields)
            if isinstance(checked, PromptRecord) and checked.prompt_id in seen:
                checked = Rejected(source.file, loc, fields.id, duplicate_reason(checked.prompt_id), raw_text(row, raw))
            if isinstance(checked, PromptRecord) and too_long and (reason := too_long(checked.messages)):
                checked = Rejected(source.file, loc, checked.field, reason, raw_text(row, raw))
            if isinstance(checked, Rejected):
                result.rejected.append(checked)
                continue
            seen.add(checked.prompt_id)
            result.accepted.append(checked)
    return result


# The (file, location, row, raw) iterators other readers (training data, dataset preparation) build on.
def _iter_source(path: str | Path, fields: Fields = Fields()) -> Iterator[tuple[str, str, Any, str]]:
    for source in plan_sources(path, fields):
        for number, row, raw in iter_rows(source):
            yield source.file, source.location(number), row, raw


def _iter_jsonl(path: str | Path) -> Iterator[tuple[str, str, Any, str]]:
    source = Source(str(path), "jsonl")
    for number, row, raw in iter_rows(source):
        yield source.file, source.location(number), row, raw

"""Reading prompt records from JSONL, Parquet, or a local Hugging Face dataset directory.

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

from prefloop.core.templates import last_user_text, validate_messages


class InputError(ValueError):
    """A prompt source that cannot be read at all; the message names the file and what is wrong."""


@dataclass
class PromptRecord:
    prompt_id: str
    messages: list[dict[str, str]]
    prompt: str  # the last user turn, what PairRM-style judges read
    source: str  # "file:line" or "file:row", for error messages downstream


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


@dataclass(frozen=True)
class Fields:
    prompt: str = "prompt"
    messages: str = "messages"
    id: str = "prompt_id"


def derive_prompt_id(messages: list[dict[str, str]]) -> str:
    """A stable id from the conversation's content: the same prompt gets the same id in every run."""
    canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "p" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


Row = tuple[str, str, Any, str]  # (file, "line 7" / "row 12", parsed row or the exception, raw text)


def _iter_jsonl(path: Path) -> Iterator[Row]:
    """Yield each non-blank line, decoded and parsed per line so one bad line spoils nothing else."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield str(path), f"line {lineno}", ValueError(
                    f"not valid UTF-8 ({err.reason} at byte {err.start})"), repr(raw[:200])
                continue
            if not text.strip():
                continue
            try:
                yield str(path), f"line {lineno}", json.loads(text), text
            except json.JSONDecodeError as err:
                yield str(path), f"line {lineno}", ValueError(f"malformed JSON: {err.msg} (column {err.colno})"), text


def _table_rows(table: Any, path: Path, fields: Fields) -> Iterator[Row]:
    if fields.prompt not in table.column_names and fields.messages not in table.column_names:
        raise InputError(f"{path}: no '{fields.prompt}' or '{fields.messages}' column "
                         f"(columns: {', '.join(table.column_names)})")
    for i, row in enumerate(table.to_pylist()):
        yield str(path), f"row {i}", row, ""


def _iter_parquet(path: Path, fields: Fields) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise InputError(f"{path}: not a readable Parquet file: {err}") from None
    yield from _table_rows(table, path, fields)


def _iter_hf_dir(path: Path, fields: Fields) -> Iterator[Row]:
    """A dataset saved with ``datasets.save_to_disk`` (Arrow stream files), or a folder of data files."""
    import pyarrow as pa

    arrow_files = sorted(path.glob("*.arrow")) or sorted(path.glob("*/*.arrow"))
    for arrow in arrow_files:
        with pa.memory_map(str(arrow)) as source:
            try:
                table = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                table = pa.ipc.open_file(source).read_all()
        yield from _table_rows(table, arrow, fields)
    if arrow_files:
        return
    data_files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".parquet"))
    if not data_files:
        raise InputError(f"{path}: a dataset directory with no .arrow, .parquet or .jsonl files")
    for data_file in data_files:
        yield from _iter_source(data_file, fields)


def _iter_source(path: Path, fields: Fields) -> Iterator[Row]:
    if path.is_dir():
        yield from _iter_hf_dir(path, fields)
    elif path.suffix == ".parquet":
        yield from _iter_parquet(path, fields)
    elif path.suffix in (".jsonl", ".json"):
        yield from _iter_jsonl(path)
    else:
        raise InputError(f"{path}: unsupported prompt file type (use .jsonl, .parquet or a dataset directory)")


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


def read_prompts(path: str | Path, fields: Fields = Fields(),
                 too_long: Callable[[list[dict[str, str]]], str | None] | None = None) -> ReadResult:
    """Read every row of a prompt source into accepted records and rejected rows.

    ``too_long(messages)`` returns a reason when the rendered prompt exceeds the token budget (the caller
    owns the tokenizer), or None.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: prompt file not found")
    result, seen = ReadResult(), set()
    for file, loc, row, raw in _iter_source(path, fields):

        def reject(field_name: str, reason: str) -> None:
            result.rejected.append(Rejected(file, loc, field_name, reason, raw or json.dumps(row, default=str)[:500]))

        if isinstance(row, Exception):
            reject("(line)", str(row))
            continue
        if not isinstance(row, dict):
            reject("(line)", f"expected a JSON object, got {type(row).__name__}")
            continue
        try:
            messages, used = _row_to_messages(row, fields)
        except ValueError as err:
            name, _, reason = str(err).partition(": ")
            reject(name, reason)
            continue
        if not all(m["content"].strip() for m in messages if m["role"] == "user"):
            reject(used, "empty prompt")
            continue
        given = row.get(fields.id)
        if given is not None and (not isinstance(given, (str, int)) or str(given).strip() == ""):
            reject(fields.id, f"must be a non-empty string or integer, got {given!r}")
            continue
        prompt_id = str(given) if given is not None else derive_prompt_id(messages)
        if prompt_id in seen:
            reject(fields.id, f"duplicate prompt_id {prompt_id!r} (same id or same content as an earlier row)")
            continue
        reason = too_long(messages) if too_long else None
        if reason:
            reject(used, reason)
            continue
        seen.add(prompt_id)
        result.accepted.append(PromptRecord(prompt_id, messages, last_user_text(messages), f"{file}:{loc}"))
    return result

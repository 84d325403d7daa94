"""The files of a prompt source and their rows: JSONL, Parquet, or a local Hugging Face dataset directory.

``plan_sources(path)`` lists the files to read (one ``Source`` each) and checks what can be checked without
reading rows: the file exists, its type is known, a table has a prompt or messages column. Its errors are
``InputError``s naming the file. ``iter_rows(source)`` then yields each row with its number, one file at a time
and one batch at a time, so neither the driver (``read_prompts``) nor a Ray Data reader (the streaming rollout,
``actors/prompt_reader.py``) ever holds a whole file's rows.

A row's number is its line (1-based) in a JSONL file and its row index (0-based) in a table, as
``Source.location`` writes it into every rejected record ("line 7", "row 12").
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Collection, Iterator

TABLE_BATCH_ROWS = 1024  # rows converted to Python at a time when reading a table


class InputError(ValueError):
    """A prompt source that cannot be read at all; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Fields:
    prompt: str = "prompt"
    messages: str = "messages"
    id: str = "prompt_id"


@dataclass(frozen=True)
class Source:
    """One file of a prompt source: ``kind`` is ``jsonl``, ``parquet`` or ``arrow`` (a dataset's shard)."""

    file: str
    kind: str

    def location(self, number: int) -> str:
        return f"line {number}" if self.kind == "jsonl" else f"row {number}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


Row = tuple[int, Any, str]  # (line or row number, parsed row or the exception explaining it, raw text)


def plan_sources(path: str | Path, fields: Fields = Fields()) -> list[Source]:
    """The files to read for ``path``, in reading order; raise InputError for a source that cannot be read."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: prompt file not found")
    if path.is_dir():
        return _plan_dir(path, fields)
    if path.suffix == ".parquet":
        _check_columns(_parquet_file(path).schema_arrow.names, path, fields)
        return [Source(str(path), "parquet")]
    if path.suffix in (".jsonl", ".json"):
        return [Source(str(path), "jsonl")]
    raise InputError(f"{path}: unsupported prompt file type (use .jsonl, .parquet or a dataset directory)")


def _plan_dir(path: Path, fields: Fields) -> list[Source]:
    """A dataset saved with ``datasets.save_to_disk`` (Arrow stream files), or a folder of data files."""
    arrow_files = sorted(path.glob("*.arrow")) or sorted(path.glob("*/*.arrow"))
    if arrow_files:
        for arrow in arrow_files:
            with _arrow_batches(arrow) as (schema, _):
                _check_columns(schema.names, arrow, fields)
        return [Source(str(a), "arrow") for a in arrow_files]
    data_files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".parquet"))
    if not data_files:
        raise InputError(f"{path}: a dataset directory with no .arrow, .parquet or .jsonl files")
    return [s for data_file in data_files for s in plan_sources(data_file, fields)]


def _check_columns(names: list[str], path: Path, fields: Fields) -> None:
    if fields.prompt not in names and fields.messages not in names:
        raise InputError(f"{path}: no '{fields.prompt}' or '{fields.messages}' column (columns: {', '.join(names)})")


def _parquet_file(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise InputError(f"{path}: not a readable Parquet file: {err}") from None


@contextmanager
def _arrow_batches(path: Path) -> Iterator[tuple[Any, Iterator[Any]]]:
    """(schema, record batches) of a memory-mapped Arrow IPC file: the stream format ``save_to_disk`` writes,
    or the file format."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)
            schema, batches = reader.schema, iter(reader)
        except pa.ArrowInvalid:
            source.seek(0)
            file_reader = pa.ipc.open_file(source)
            schema = file_reader.schema
            batches = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
        yield schema, batches


def iter_rows(source: Source, keep: Collection[int] | None = None) -> Iterator[Row]:
    """Yield ``(number, row, raw)`` for every row of ``source`` (only the numbers in ``keep`` when given: the
    others are skipped without being parsed). A row that cannot be decoded comes as a ValueError saying why."""
    path = Path(source.file)
    if source.kind == "jsonl":
        yield from _jsonl_rows(path, keep)
        return
    if source.kind == "parquet":
        yield from _table_rows(_parquet_file(path).iter_batches(TABLE_BATCH_ROWS), keep)
        return
    with _arrow_batches(path) as (_, batches):
        yield from _table_rows(batches, keep)


def _jsonl_rows(path: Path, keep: Collection[int] | None) -> Iterator[Row]:
    """Each non-blank line, decoded and parsed per line so one bad line spoils nothing else."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if keep is not None and lineno not in keep:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield lineno, ValueError(f"not valid UTF-8 ({err.reason} at byte {err.start})"), repr(raw[:200])
                continue
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text), text
            except json.JSONDecodeError as err:
                yield lineno, ValueError(f"malformed JSON: {err.msg} (column {err.colno})"), text


def _table_rows(batches: Any, keep: Collection[int] | None) -> Iterator[Row]:
    """Rows of Arrow record batches, numbered from 0 across batches; only the kept ones are converted."""
    first = 0
    for batch in batches:
        if keep is None:
            numbers = range(first, first + batch.num_rows)
            rows = batch.to_pylist()
        else:
            numbers = [n for n in range(first, first + batch.num_rows) if n in keep]
            rows = batch.take([n - first for n in numbers]).to_pylist() if numbers else []
        for number, row in zip(numbers, rows):
            yield number, row, ""
        first += batch.num_rows

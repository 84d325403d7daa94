"""The files of a prompt source and their rows: JSONL, Parquet, or a local Hugging Face dataset directory.

``plan_sources(path)`` lists the files to read (one ``Source`` each) and checks what can be checked without
reading rows: the file exists, its type is known, a table has a prompt or messages column. Its errors are
``InputError``s naming the file. ``plan_pieces`` cuts the files into ``Piece``s of at most N rows (a JSONL file
at line boundaries, found in one streaming pass; a table by row ranges), the unit a Ray Data reader task reads
(the streaming rollout, ``actors/prompt_reader.py``). ``iter_rows(source, piece)`` yields each row of a file or of
one piece with its number, one batch at a time, so no reader ever holds a whole file's rows.

A row's number is its line (1-based) in a JSONL file and its row index (0-based) in a table, as
``Source.location`` writes it into every rejected record ("line 7", "row 12").
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import islice
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


@dataclass(frozen=True)
class Piece:
    """Rows ``first`` .. ``first + rows - 1`` of source ``source`` (an index into the plan's sources): lines
    (blank ones included) of a JSONL file, starting at byte ``offset``; rows of a table."""

    source: int
    first: int
    rows: int
    offset: int = 0

    def to_dict(self) -> dict[str, int]:
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


def plan_pieces(sources: list[Source], rows: int) -> list[Piece]:
    """Every source cut into pieces of at most ``rows`` rows, in reading order (an empty file: one empty piece,
    so every file is accounted for)."""
    if rows < 1:
        raise ValueError(f"rows per piece must be >= 1, got {rows}")
    pieces: list[Piece] = []
    for index, source in enumerate(sources):
        if source.kind == "jsonl":
            mine = _jsonl_pieces(index, Path(source.file), rows)
        else:
            total = _table_num_rows(source)
            mine = [Piece(index, first, min(rows, total - first)) for first in range(0, total, rows)]
        pieces += mine or [Piece(index, 1 if source.kind == "jsonl" else 0, 0)]
    return pieces


def _jsonl_pieces(index: int, path: Path, rows: int) -> list[Piece]:
    """Where every ``rows`` lines start: one pass over the file, one line in memory at a time."""
    pieces, offset, start, count = [], 0, 0, 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if count == 0:
                start, first = offset, lineno
            offset, count = offset + len(raw), count + 1
            if count == rows:
                pieces.append(Piece(index, first, count, start))
                count = 0
    if count:
        pieces.append(Piece(index, first, count, start))
    return pieces


def _table_num_rows(source: Source) -> int:
    if source.kind == "parquet":
        return _parquet_file(Path(source.file)).metadata.num_rows
    with _arrow_batches(Path(source.file)) as (_, batches):  # memory-mapped: counting touches no row data
        return sum(batch.num_rows for batch in batches)


def iter_rows(source: Source, keep: Collection[int] | None = None, piece: Piece | None = None) -> Iterator[Row]:
    """Yield ``(number, row, raw)`` for every row of ``source``, or of one ``piece`` of it (only the numbers in
    ``keep`` when given: the others are skipped without being parsed). A row that cannot be decoded comes as a
    ValueError saying why."""
    path = Path(source.file)
    if source.kind == "jsonl":
        yield from _jsonl_rows(path, keep, piece)
        return
    lo, hi = (piece.first, piece.first + piece.rows) if piece else (0, None)
    if source.kind == "parquet":
        yield from _parquet_rows(_parquet_file(path), keep, lo, hi)
        return
    with _arrow_batches(path) as (_, batches):
        yield from _table_rows(batches, 0, keep, lo, hi)


def _jsonl_rows(path: Path, keep: Collection[int] | None, piece: Piece | None) -> Iterator[Row]:
    """Each non-blank line, decoded and parsed per line so one bad line spoils nothing else."""
    with open(path, "rb") as fh:
        lines: Iterator[bytes] = fh
        if piece is not None:
            fh.seek(piece.offset)
            lines = islice(fh, piece.rows)
        for lineno, raw in enumerate(lines, start=piece.first if piece else 1):
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


def _parquet_rows(pf: Any, keep: Collection[int] | None, lo: int, hi: int | None) -> Iterator[Row]:
    """Rows lo .. hi-1 of a Parquet file, decoding only the row groups that hold them."""
    groups, start, first = [], 0, None
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if start + n > lo and (hi is None or start < hi):
            groups.append(g)
            first = start if first is None else first
        start += n
    if groups:
        yield from _table_rows(pf.iter_batches(TABLE_BATCH_ROWS, row_groups=groups), first, keep, lo, hi)


def _table_rows(batches: Any, first: int, keep: Collection[int] | None, lo: int = 0, hi: int | None = None
                ) -> Iterator[Row]:
    """Rows lo .. hi-1 of Arrow record batches whose first row is number ``first``; only the rows wanted
    (in range, and in ``keep`` when given) are converted to Python."""
    for batch in batches:
        end = first + batch.num_rows
        if hi is not None and first >= hi:
            return
        wanted = range(max(first, lo), min(end, hi) if hi is not None else end)
        numbers = [n for n in wanted if n in keep] if keep is not None else list(wanted)
        if numbers:
            rows = batch.take([n - first for n in numbers]).to_pylist()
            for number, row in zip(numbers, rows):
                yield number, row, ""
        first = end

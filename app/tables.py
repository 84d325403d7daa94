"""Writing the run's tables: Parquet for data other tools read (TRL, pandas), JSONL for rejected records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as Parquet; an empty list still writes a readable (empty) file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({}), path)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()

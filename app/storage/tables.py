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


class ParquetAppender:
    """One Parquet file written batch by batch (a row group per ``write``), so only one batch is in memory.
    The schema is fixed up front: every batch must fit it, and a file with no rows still has its columns."""

    def __init__(self, path: Path, schema: Any):
        import pyarrow.parquet as pq

        self.path, self.schema, self.rows = path, schema, 0
        self._writer = pq.ParquetWriter(path, schema)

    def write(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        if rows:
            self._writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))
            self.rows += len(rows)

    def close(self) -> None:
        self._writer.close()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()

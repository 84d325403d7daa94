"""Opening a public dataset for ``prefloop data prepare``: its splits as rows, and a fingerprint of what was read.

A source is one of:
- a local ``.parquet`` or ``.jsonl`` file (one split, named by ``--split`` or the file's stem);
- a directory saved with ``datasets``' ``save_to_disk`` (a ``DatasetDict``: its split names; or one ``Dataset``);
- a directory of data files in the hub's layout (``data/train_prefs-00000-of-00001.parquet``): the split is the
  file name up to its first ``-``, so a downloaded snapshot of a dataset repository reads as on the hub;
- a hub name (``owner/name``, with ``--config``) loaded with ``datasets.load_dataset``, where the machine can
  reach the hub (the real path on a cluster's login node; CI only ever reads local files).

The fingerprint names what the output was made from: the sha256 of every file read, or ``datasets``'
fingerprint of each split for a hub load.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from prefloop.core.prompts import InputError, _iter_jsonl

RowIter = Iterator[tuple[str, str, Any]]  # (where, "row 12" / "line 7", row or exception)


@dataclass
class Source:
    """A dataset's splits (name -> a function yielding its rows) and its fingerprint."""

    name: str
    splits: dict[str, Callable[[], RowIter]] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def rows(self, split: str) -> RowIter:
        if split not in self.splits:
            raise InputError(f"{self.name}: no split {split!r} (splits: {', '.join(sorted(self.splits)) or 'none'})")
        return self.splits[split]()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files_fingerprint(root: Path, files: list[Path]) -> dict[str, Any]:
    per_file = {str(f.relative_to(root) if f != root else f.name): sha256_file(f) for f in sorted(files)}
    combined = hashlib.sha256(json.dumps(per_file, sort_keys=True).encode()).hexdigest()
    return {"kind": "sha256", "sha256": combined, "files": per_file}


def _parquet_rows(path: Path, where: str) -> RowIter:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise InputError(f"{path}: not a readable Parquet file: {err}") from None
    for i, row in enumerate(table.to_pylist()):
        yield where, f"row {i}", row


def _jsonl_rows(path: Path, where: str) -> RowIter:
    """JSON lines; or, for a ``.json`` file holding one array (AlpacaEval's ``alpaca_eval.json``), its items."""
    if path.suffix == ".json":
        with open(path, "rb") as fh:
            head = fh.read(64).lstrip()
        if head.startswith(b"["):
            try:
                items = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise InputError(f"{path}: not a readable JSON array: {err}") from None
            for i, row in enumerate(items):
                yield where, f"item {i}", row
            return
    for _, loc, row, raw in _iter_jsonl(path):
        if isinstance(row, Exception):
            row.raw = raw.rstrip("\n")  # rejected.jsonl's raw: the line as read (core/data_sources._raw)
        yield where, loc, row


def _file_rows(path: Path, where: str) -> RowIter:
    if path.suffix == ".parquet":
        return _parquet_rows(path, where)
    if path.suffix in (".jsonl", ".json"):
        return _jsonl_rows(path, where)
    raise InputError(f"{path}: unsupported file type (use .parquet, .jsonl or a dataset directory)")


def _dataset_rows(ds: Any, where: str) -> RowIter:
    for i, row in enumerate(ds):
        yield where, f"row {i}", row


def _saved_dataset(path: Path) -> Source:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    files = [p for p in path.rglob("*") if p.is_file()]
    src = Source(str(path), fingerprint=_files_fingerprint(path, files))
    parts = loaded if isinstance(loaded, datasets.DatasetDict) else {path.name: loaded}
    for split, ds in parts.items():
        src.splits[split] = lambda ds=ds, split=split: _dataset_rows(ds, f"{path}[{split}]")
    return src


def _data_files(path: Path) -> Source:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".parquet", ".jsonl", ".json"))
    if not files:
        raise InputError(f"{path}: a directory with no saved dataset (dataset_dict.json / state.json) and no "
                         ".parquet or .jsonl files")
    by_split: dict[str, list[Path]] = {}
    for f in files:
        by_split.setdefault(re.split(r"-\d{5}-of-\d{5}$", f.stem)[0].split("-")[0], []).append(f)
    src = Source(str(path), fingerprint=_files_fingerprint(path, files))
    for split, group in by_split.items():
        def rows(group: list[Path] = group) -> RowIter:
            for f in group:
                yield from _file_rows(f, str(f))
        src.splits[split] = rows
    return src


def _hub(name: str, config: str | None) -> Source:
    try:
        import datasets
    except ImportError:
        raise InputError(f"{name}: not a local path, and loading it from the hub needs `pip install datasets`")
    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as err:  # offline, unknown name, gated dataset: say which
        raise InputError(f"{name}: not a local path, and the hub load failed: {err}") from None
    src = Source(name, fingerprint={"kind": "hub", "name": name, "config": config,
                                    "splits": {s: getattr(ds, "_fingerprint", None) for s, ds in loaded.items()}})
    for split, ds in loaded.items():
        src.splits[split] = lambda ds=ds, split=split: _dataset_rows(ds, f"{name}[{split}]")
    return src


def open_source(spec: str, split: str | None = None, config: str | None = None) -> Source:
    """Open ``spec`` (file, saved dataset dir, data-file dir, or hub name); see the module docstring."""
    path = Path(spec)
    if path.is_file():
        name = split or path.stem
        return Source(str(path), {name: lambda: _file_rows(path, str(path))},
                      _files_fingerprint(path.parent, [path]))
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _saved_dataset(path)
        return _data_files(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.startswith(("/", ".")):
        return _hub(spec, config)
    raise InputError(f"{spec}: no such file or directory (and not a hub dataset name owner/name)")

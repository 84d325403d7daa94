"""The tiny ARC-style task's dataset (``tiny_arc.yaml``): its two JSONL splits, read from beside this file.

lm-eval loads this module by path (the YAML's ``custom_dataset: !function tiny_arc_data.load``), so the task
needs neither the hub nor a path relative to the working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SPLITS = {"train": "tiny_arc_train.jsonl", "test": "tiny_arc_test.jsonl"}
FIELDS = ("id", "question", "choices", "answerKey")


def read_split(path: Path) -> list[dict[str, Any]]:
    """The rows of one split; a row missing a field, or whose answer is not one of its labels, is an error
    naming the file, line and field."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        for field in FIELDS:
            if field not in row:
                raise ValueError(f"{path}:{n}: missing field {field!r}")
        if row["answerKey"] not in row["choices"]["label"]:
            raise ValueError(f"{path}:{n}: answerKey {row['answerKey']!r} is not one of choices.label")
        rows.append(row)
    return rows


def load(**_: Any) -> Any:
    """The task's ``DatasetDict`` (train: few-shot examples, test: the scored items)."""
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(read_split(HERE / name))
                                 for split, name in SPLITS.items()})

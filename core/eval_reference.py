"""The held-out file's reference outputs, the baseline of ``eval.baseline: reference`` (AlpacaEval 2.0's way).

AlpacaEval judges a model's answers against the reference outputs that ship with its 805 instructions (the
``output`` column; ``prefloop data prepare alpaca-eval`` keeps it as ``reference_output``). This module reads that
column beside each row's ``prompt_id`` (the same ids the evaluation reads, ``core/prompts.check_row``), and
refuses a file in which a row has none: a reference baseline with a hole in it would judge fewer prompts than the
recipe says, silently. Rows that are not valid prompts are left to the prompt reader, which rejects them with its
own reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefloop.core.prompts import Fields, InputError, PromptRecord, _iter_source, check_row


class MissingReference(InputError):
    """A held-out row without a usable reference output: names the file, the row and the field."""


def reference_of(row: Any, column: str) -> str | None:
    """The row's reference output, or None when it has no non-empty string there."""
    value = row.get(column) if isinstance(row, dict) else None
    return value if isinstance(value, str) and value.strip() else None


def read_references(path: str | Path, fields: Fields, column: str) -> dict[str, str]:
    """``prompt_id -> reference output`` for every valid prompt row of ``path``; ``MissingReference`` at the
    first one without a reference (file, row and field named)."""
    out: dict[str, str] = {}
    for file, loc, row, raw in _iter_source(path, fields):
        record = check_row(file, loc, row, raw, fields)
        if not isinstance(record, PromptRecord):
            continue
        ref = reference_of(row, column)
        if ref is None:
            got = "missing" if not isinstance(row, dict) or column not in row else f"{row.get(column)!r:.60}"
            raise MissingReference(f"{file}: {loc}: field {column!r}: eval.baseline is 'reference' but this row "
                                   f"has no reference output ({got}); prepare the held-out set with "
                                   "`prefloop data prepare alpaca-eval`, or set eval.reference_field")
        out[record.prompt_id] = ref
    return out

"""The streaming rollout's Ray Data reader: pieces of prompt files -> checked rows (a thin shell over
``core.prompt_blocks``).

A ``map_batches`` class (an actor pool), so the tokenizer is set up once per actor. The tokenizer object comes from
the driver through Ray (a few MB at most), so no actor opens the policy's directory on the driver's disk. Each
input row is one JSON piece: ``{"index": i, "source": {"file", "kind"}, "piece": {"source", "first", "rows",
"offset"}, "keep": [numbers] or null}``, at most ``rollout.block_prompts`` rows of one file, so no reader holds a file.

- ``mode="check"``: one row per piece, ``summary`` (JSON, see ``core.prompt_blocks.check_piece``);
- ``mode="rows"``: the piece's kept rows as the generators take them (``prompt_rows_schema``).
"""

from __future__ import annotations

import json
from typing import Any

from prefloop.core.prompt_blocks import TokenBudget, check_piece, used_rows
from prefloop.core.prompt_files import Fields, Piece, Source

CHECK, ROWS = "check", "rows"


def prompt_rows_schema() -> Any:
    """The columns a generator stage reads (the types ``ray.data.from_items`` gave them before streaming)."""
    import pyarrow as pa

    return pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()), ("messages", pa.string()),
                      ("prompt_token_ids", pa.list_(pa.int64()))])


class PromptReader:
    """Reads the pieces named by its input rows; ``mode`` is ``check`` (first pass) or ``rows`` (second)."""

    def __init__(self, mode: str, tokenizer: Any, style: str, max_prompt_tokens: int, control: str | None,
                 fields: dict[str, str]):
        if mode not in (CHECK, ROWS):
            raise ValueError(f"PromptReader mode must be {CHECK!r} or {ROWS!r}, got {mode!r}")
        self.mode, self.fields = mode, Fields(**fields)
        self.budget = TokenBudget(tokenizer, style, max_prompt_tokens, control)
        self.schema = prompt_rows_schema()

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        summaries, rows = [], []
        for text in batch["piece"]:
            item = json.loads(str(text))
            source, piece = Source(**item["source"]), Piece(**item["piece"])
            if self.mode == CHECK:
                summaries.append(json.dumps(check_piece(source, piece, item["index"], self.fields, self.budget)))
            else:
                rows += used_rows(source, piece, set(item["keep"]), self.fields, self.budget)
        if self.mode == CHECK:
            return pa.table({"summary": pa.array(summaries, pa.string())})
        return pa.Table.from_pylist(rows, schema=self.schema)

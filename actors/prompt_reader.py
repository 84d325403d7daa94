"""The streaming rollout's Ray Data reader: prompt files -> checked blocks (a thin shell over ``core.prompt_blocks``).

A ``map_batches`` class (an actor pool), so the tokenizer is set up once per actor. The tokenizer object comes from
the driver through Ray (it is a few MB at most), so no actor opens the policy's directory on the driver's disk.
Each input row is one JSON "piece": ``{"index": i, "source": {"file", "kind"}, "keep": [numbers] or null}``; a
call yields several output blocks per file, one per ``block_rows`` rows, so no actor holds a whole file either.

- ``mode="check"``: one row per block, ``summary`` (JSON, see ``core.prompt_blocks.check_blocks``);
- ``mode="rows"``: the kept rows as the generators take them (``PROMPT_ROWS``).
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from prefloop.core.prompt_blocks import TokenBudget, check_blocks, used_blocks
from prefloop.core.prompt_files import Fields, Source

CHECK, ROWS = "check", "rows"


def prompt_rows_schema() -> Any:
    """The columns a generator stage reads (the same types ``ray.data.from_items`` gave them before)."""
    import pyarrow as pa

    return pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()), ("messages", pa.string()),
                      ("prompt_token_ids", pa.list_(pa.int64()))])


class PromptReader:
    """Reads the files named by its input rows; ``mode`` is ``check`` (first pass) or ``rows`` (second)."""

    def __init__(self, mode: str, tokenizer: Any, style: str, max_prompt_tokens: int, control: str | None,
                 fields: dict[str, str], block_rows: int):
        if mode not in (CHECK, ROWS):
            raise ValueError(f"PromptReader mode must be {CHECK!r} or {ROWS!r}, got {mode!r}")
        self.mode, self.fields, self.block_rows = mode, Fields(**fields), block_rows
        self.budget = TokenBudget(tokenizer, style, max_prompt_tokens, control)
        self.schema = prompt_rows_schema()

    def __call__(self, batch: dict[str, Any]) -> Iterator[Any]:
        import pyarrow as pa

        for text in batch["piece"]:
            piece = json.loads(str(text))
            source = Source(**piece["source"])
            if self.mode == CHECK:
                for summary in check_blocks(source, piece["index"], self.fields, self.budget, self.block_rows):
                    yield pa.table({"summary": [json.dumps(summary)]})
            else:
                keep = set(piece["keep"])
                for rows in used_blocks(source, keep, self.fields, self.budget, self.block_rows):
                    yield pa.Table.from_pylist(rows, schema=self.schema)

"""What one Ray Data reader task does with one piece of a prompt file (pure; ``actors/prompt_reader.py`` is its
shell). A piece is a block of at most ``rollout.block_prompts`` rows (``core.prompt_files.plan_pieces``).

- ``check_piece`` (the rollout's first pass): every row checked as ``read_prompts`` checks it, token budget
  included; what goes back to the driver is a small summary: the accepted rows' numbers and prompt_ids, and the
  rejected rows' records. The rows themselves stay in the reader.
- ``used_rows`` (the second pass): only the rows the driver chose (``keep``), checked again and tokenised, as
  the generators take them: ``prompt_id``, ``prompt``, ``messages`` (JSON), ``prompt_token_ids``.

``TokenBudget`` tokenises a prompt exactly as the generators receive it (the policy's template, a cSFT
model's control token) and rejects, never truncates, one over ``data.max_prompt_tokens``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Collection, Iterator

from prefloop.core.prompt_files import Fields, Piece, Source, iter_rows
from prefloop.core.prompts import PromptRecord, Rejected, check_row, raw_text
from prefloop.core.templates import generation_text


@dataclass
class TokenBudget:
    """The prompt's token ids as the generators get them; a reason when there are more than ``budget``."""

    tokenizer: Any
    style: str
    budget: int
    control: str | None = None  # a cSFT model's <|good|>, appended to the prompt

    def ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = generation_text(messages, self.style, self.tokenizer, self.control)
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def too_long(self, messages: list[dict[str, str]], ids: list[int] | None = None) -> str | None:
        n = len(self.ids(messages) if ids is None else ids)
        return f"prompt is {n} tokens, over data.max_prompt_tokens={self.budget}" if n > self.budget else None


def _checked(source: Source, piece: Piece, fields: Fields, budget: TokenBudget, keep: Collection[int] | None = None
             ) -> Iterator[tuple[int, PromptRecord | Rejected, list[int]]]:
    """(number, record or rejection, the record's token ids) for each row of the piece (each kept row)."""
    for number, row, raw in iter_rows(source, keep, piece):
        checked, ids = check_row(source.file, source.location(number), row, raw, fields), []
        if isinstance(checked, PromptRecord):
            ids = budget.ids(checked.messages)
            if reason := budget.too_long(checked.messages, ids):
                checked = Rejected(source.file, source.location(number), checked.field, reason, raw_text(row, raw))
        yield number, checked, ids


def check_piece(source: Source, piece: Piece, index: int, fields: Fields, budget: TokenBudget) -> dict[str, Any]:
    """``{"piece": index, "accepted": [[number, prompt_id], ...], "rejected": [record, ...]}`` (duplicates are the
    driver's call: only it sees every piece)."""
    summary: dict[str, Any] = {"piece": index, "accepted": [], "rejected": []}
    for number, checked, _ in _checked(source, piece, fields, budget):
        if isinstance(checked, Rejected):
            summary["rejected"].append(checked.to_dict())
        else:
            summary["accepted"].append([number, checked.prompt_id])
    return summary


def used_rows(source: Source, piece: Piece, keep: Collection[int], fields: Fields, budget: TokenBudget
              ) -> list[dict[str, Any]]:
    """The kept rows of the piece, ready for the generators. A kept row that no longer passes its checks means
    the file changed between the two passes: an error, not a silent skip."""
    rows = []
    for _, checked, ids in _checked(source, piece, fields, budget, keep):
        if isinstance(checked, Rejected):
            raise RuntimeError(f"{source.file} {checked.location}: accepted on the first read, rejected on the "
                               f"second ({checked.field}: {checked.reason}); did the file change during the rollout?")
        rows.append({"prompt_id": checked.prompt_id, "prompt": checked.prompt,
                     "messages": json.dumps(checked.messages), "prompt_token_ids": ids})
    return rows

"""The ``ifeval`` scorer: IFEval's instruction checkers grade every candidate (``core/ifeval.py``).

Each prompt's instructions come from the judge's instruction table (``scorer.instructions``), looked up by
``prompt_id``; a prompt the table does not know is an error (its score would be meaningless). The score of a
candidate is the share of its prompt's instructions it follows (strict); ``grades`` returns the per-instruction
results as well, for the eval judge's figures.
"""

from __future__ import annotations

from typing import Any

from prefloop.actors.common import timed
from prefloop.actors.scorers import _as_lists, _with_scores
from prefloop.core import ifeval


class IFEvalScorer:
    """Scores ``candidates`` by IFEval's checkers; reads ``prompt_id``, ``prompt`` and ``candidates``."""

    def __init__(self, instructions: str, instruction_ids: list[str] | None = None):
        self.allowed = ifeval.check_ids(instruction_ids, "instruction_ids")
        self.table = ifeval.read_instructions(instructions, self.allowed)
        self.source = instructions

    def instructions(self, prompt_id: str) -> ifeval.Instructions:
        try:
            return self.table[prompt_id]
        except KeyError:
            raise KeyError(f"ifeval: prompt_id {prompt_id!r} is not in the instruction table {self.source}") from None

    def grades(self, prompt_ids: list[str], prompts: list[str], answers: list[str]) -> list[ifeval.Grade]:
        return [ifeval.grade(p, a, self.instructions(pid)) for pid, p, a in zip(prompt_ids, prompts, answers)]

    @timed("score_s")
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        scores = [[ifeval.grade(p, c, self.instructions(pid)).reward for c in cands]
                  for pid, p, cands in zip(batch["prompt_id"], batch["prompt"], _as_lists(batch["candidates"]))]
        return _with_scores(batch, scores)

"""The ``ifeval`` eval judge: IFEval's checkers on the held-out answers, on the driver, and the manifest's figures.

Grading a few hundred answers by regular expressions takes well under a second, so no actor is started (as for
``function`` judges). A verdict carries, beside ``score`` / ``base_score`` (the share of instructions followed,
strict) and ``preference``, every instruction's strict and loose result for both answers, from which
``manifest_figures`` computes IFEval's four figures for the round and the base and the per-instruction-id table.
"""

from __future__ import annotations

from typing import Any

from prefloop.core import ifeval
from prefloop.core.config import JudgeConfig
from prefloop.core.eval_metrics import preference


def ifeval_verdicts(judge: JudgeConfig, answers: list[dict], base: list[dict]) -> list[dict[str, Any]]:
    from prefloop.actors.ifeval_scorer import IFEvalScorer

    scorer = IFEvalScorer(judge.instructions, judge.instruction_ids)
    base_by_id = {b["prompt_id"]: b["answer"] for b in base}
    ids, prompts = [a["prompt_id"] for a in answers], [a["prompt"] for a in answers]
    mine = scorer.grades(ids, prompts, [a["answer"] for a in answers])
    theirs = scorer.grades(ids, prompts, [base_by_id[i] for i in ids])
    return [{"score": g.reward, "base_score": b.reward, "preference": preference(g.reward, b.reward),
             "ids": list(g.ids), "strict": list(g.strict), "loose": list(g.loose),
             "base_strict": list(b.strict), "base_loose": list(b.loose)} for g, b in zip(mine, theirs)]


def manifest_figures(verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """``ifeval_prompt_strict`` ... for the round, ``base_ifeval_*`` for the base, and ``ifeval_per_id``:
    instruction id -> {n, strict, base_strict}."""
    mine = [ifeval.Grade(tuple(v["ids"]), tuple(v["strict"]), tuple(v["loose"])) for v in verdicts]
    theirs = [ifeval.Grade(tuple(v["ids"]), tuple(v["base_strict"]), tuple(v["base_loose"])) for v in verdicts]
    table = ifeval.per_id(mine)
    for iid, row in ifeval.per_id(theirs).items():
        table[iid]["base_strict"] = row["strict"]
    return {**ifeval.figures(mine), **ifeval.figures(theirs, "base_"), "ifeval_per_id": table}

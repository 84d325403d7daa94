"""The ``ifeval`` eval judge: IFEval's checkers on the held-out answers, on the driver, and the manifest's figures.

Grading a few hundred answers by regular expressions takes well under a second, so no actor is started (as for
``function`` judges). A verdict carries, beside ``score`` / ``base_score`` (the share of instructions followed,
strict) and ``preference``, every instruction's strict and loose result for both answers, from which
``manifest_figures`` computes IFEval's four figures for the round and the base and the per-instruction-id table.
"""

from __future__ import annotations

from typing import Any

from prefloop.core import ifeval
from prefloop.core.eval_metrics import preference
from prefloop.core.judge_config import JudgeConfig


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


FIGURES = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


def report_tables(rows: list[dict[str, Any]]) -> list[str]:
    """The report's IFEval section (rounds judged by ``ifeval``): the four figures, base and every round, beside
    length and repetition; then strict accuracy per instruction id, base against each round. Empty otherwise."""
    rows = [m for m in rows if "ifeval_per_id" in m]
    if not rows:
        return []
    head = ["model", *(f"{f.replace('_', ' ')}" for f in FIGURES), "length (tokens)", "repetition"]
    base = rows[0]
    lines = ["## IFEval (held-out prompts, IFEval's own checkers)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| base | " + " | ".join(f"{base[f'base_ifeval_{f}']:.3f}" for f in FIGURES) +
             f" | {base.get('base_mean_length', 0):.1f} | {base.get('base_repetition_rate') or 0:.2f} |"]
    for m in rows:
        lines.append(f"| round {m['round']} | " + " | ".join(f"{m[f'ifeval_{f}']:.3f}" for f in FIGURES) +
                     f" | {m.get('mean_length', 0):.1f} | {m.get('repetition_rate') or 0:.2f} |")
    ids = sorted({iid for m in rows for iid in m["ifeval_per_id"]})
    head = ["instruction id", "prompts", "base", *(f"round {m['round']}" for m in rows)]
    lines += ["", "Strict accuracy per instruction id:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for iid in ids:
        first = next(m["ifeval_per_id"][iid] for m in rows if iid in m["ifeval_per_id"])
        cells = [f"`{iid}`", str(first["n"]), f"{first['base_strict']:.2f}"]
        cells += [f"{m['ifeval_per_id'][iid]['strict']:.2f}" if iid in m["ifeval_per_id"] else "-" for m in rows]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]

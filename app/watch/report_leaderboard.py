"""The report's leaderboard section: each round's lm_eval scores beside the model card's (``eval.leaderboard``).

Read from the eval manifests' ``leaderboard`` / ``leaderboard_average`` keys (``core/leaderboard.py``): one row
per task (its leaderboard name, lm_eval task, metric and few-shot count), the card's figure, then one column per
round; a last row with the average over the tasks, the leaderboard's "Avg.", when every round ran them all.
"""

from __future__ import annotations

from typing import Any

from prefloop.core.leaderboard import CARD_TASKS, task_label


def _cell(value: float | None, stderr: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" ± {stderr:.2f}" if stderr is not None else "")


def leaderboard_table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown lines of the section; none when no round ran the leaderboard tasks."""
    scored = [m for m in rows if m.get("leaderboard")]
    if not scored:
        return []
    tasks: dict[str, dict[str, Any]] = {}
    for m in scored:
        for name, t in m["leaderboard"].items():
            tasks.setdefault(name, t)
    head = ["task", "lm_eval task (metric, shots)", "card"] + [f"round {m['round']}" for m in scored]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, first in tasks.items():
        cells = [task_label(name), f"`{name}` ({first['metric'].split(',')[0]}, {first['num_fewshot']}-shot)",
                 _cell(first.get("card"))]
        cells += [_cell(m["leaderboard"][name]["score"], m["leaderboard"][name].get("stderr"))
                  if name in m["leaderboard"] else "-" for m in scored]
        lines.append("| " + " | ".join(cells) + " |")
    cards = [t.get("card") for t in tasks.values()]
    card_avg = sum(cards) / len(cards) if None not in cards else None
    lines.append("| " + " | ".join(["average", "", _cell(card_avg)] + [
        _cell(m.get("leaderboard_average")) if set(m["leaderboard"]) == set(tasks) else "-" for m in scored]) + " |")
    return lines


def leaderboard_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What makes a round's figures differ from the card's terms: a limit on items, other few-shot counts."""
    notes = []
    for m in rows:
        for name, t in (m.get("leaderboard") or {}).items():
            if t.get("limit") is not None:
                notes.append(f"round {m['round']}: `{name}` scored on at most {t['limit']} items "
                             "(eval.leaderboard.limit), not the whole set")
            if name in CARD_TASKS and t["num_fewshot"] != CARD_TASKS[name].num_fewshot:
                notes.append(f"round {m['round']}: `{name}` ran {t['num_fewshot']}-shot; the leaderboard's is "
                             f"{CARD_TASKS[name].num_fewshot}-shot")
    return sorted(set(notes))


def report_section(rows: list[dict[str, Any]]) -> list[str]:
    """``## Open LLM Leaderboard tasks`` for report.md (empty without them)."""
    table = leaderboard_table(rows)
    if not table:
        return []
    text = ["## Open LLM Leaderboard tasks", "",
            "lm-evaluation-harness (`lm_eval`) on each round's model (`eval.leaderboard`), in percent, ± the "
            "standard error, beside the model card's figure. Details: `round_R/leaderboard/results.json`.", "",
            *table, ""]
    notes = leaderboard_notes(rows)
    if notes:
        text += ["Not in the card's terms: " + "; ".join(notes) + ".", ""]
    return text

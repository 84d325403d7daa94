"""Several named held-out sets per recipe (``eval.sets``): each one judged every round beside the main set.

The main set is ``data.eval`` with the rest of ``eval`` (named ``main`` in the report); each entry of
``eval.sets`` (e.g. the ReMax card's AlpacaEval and Chat1M) is evaluated exactly as the main set is, by the
same functions of ``app/rounds/evaluate.py``, through ``set_recipe``: the recipe with that set's file, judge,
baseline, prompt budget and limit in place of the main set's. Its baseline answers are committed once per run
in ``round_0/base_answers-NAME``, its answers in ``round_R/eval/sets/NAME/answers.parquet``, and its figures under
the eval manifest's ``eval_sets.NAME`` (the same keys as the main set's). The report shows every set side by side.
"""

from __future__ import annotations

from typing import Any

from prefloop.core.config import Recipe

MAIN = "main"


def base_stage(name: str) -> str:
    """The stage folder of a set's baseline answers (round 0)."""
    return f"base_answers-{name}"


def set_recipe(recipe: Recipe, name: str) -> Recipe:
    """``recipe`` with set ``name`` as its one held-out set (no best-of-N, no further sets)."""
    s = recipe.eval.sets[name]
    ev = recipe.eval.model_copy(update={"judge": s.judge, "baseline": s.baseline, "reference_field": s.reference_field,
                                        "max_prompt_tokens": s.max_prompt_tokens, "best_of": None, "sets": {}})
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"eval": s.data}), "eval": ev,
                                     "loop": recipe.loop.model_copy(update={"eval_limit": s.limit})})


FIGURES = (("win_rate", "win rate"), ("lc_win_rate", "LC"))
ALPACA = (("win_rate", "AlpacaEval WR"), ("length_controlled_winrate", "AlpacaEval LC"))


def _cells(m: dict[str, Any]) -> list[str]:
    cells = [f"{m[k]:.3f}" if m.get(k) is not None else "-" for k, _ in FIGURES]
    ae = m.get("alpaca_eval") or {}
    cells += [f"{ae[k]:.2f}" if ae.get(k) is not None else "-" for k, _ in ALPACA]
    return cells


def report_tables(rows: list[dict[str, Any]]) -> list[str]:
    """The report's side-by-side table of every eval set (rounds whose manifest has ``eval_sets``; empty
    otherwise): per set its judge and baseline, then per round its win rate, prefloop's LC rate and, with
    AlpacaEval's annotator, AlpacaEval's win rate and LC win rate (percent)."""
    rows = [m for m in rows if m.get("eval_sets")]
    if not rows:
        return []
    names = [MAIN, *sorted({n for m in rows for n in m["eval_sets"]})]

    def of(m: dict[str, Any], name: str) -> dict[str, Any]:
        return m if name == MAIN else m["eval_sets"].get(name, {})

    lines = ["## Eval sets (each with its own judge and baseline)", "",
             "| set | judge | baseline | prompts |", "|---|---|---|---|"]
    for name in names:
        last = of(rows[-1], name)
        lines.append(f"| {name} | {last.get('judge', '-')} | {last.get('baseline', 'base')} | "
                     f"{(last.get('eval_prompts') or {}).get('used', '-')} |")
    head = ["round"] + [f"{name}: {label}" for name in names for _, label in FIGURES] + \
        [f"{name}: {label}" for name in names for _, label in ALPACA]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in rows:
        cells = [_cells(of(m, name)) for name in names]
        ours = [c for cs in cells for c in cs[:len(FIGURES)]]
        theirs = [c for cs in cells for c in cs[len(FIGURES):]]
        lines.append(f"| {m['round']} | " + " | ".join(ours + theirs) + " |")
    return lines + [""]

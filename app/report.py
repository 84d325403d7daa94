"""The run's report: ``RUN_DIR/report.md`` (a table over rounds), ``report.png``, ``report.html`` (self-contained,
with answers side by side: ``app/report_html.py``) and ``rounds.jsonl``.

Everything here is read back from the committed stages' manifests, so a report written after a resume is
the same as one written in a single go.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from prefloop.app import report_html
from prefloop.app.rundir import RunDir
from prefloop.core.config import Recipe

log = logging.getLogger(__name__)
EVAL = "eval"


def round_rows(recipe: Recipe, run: RunDir) -> list[dict[str, Any]]:
    rows = []
    for r in range(recipe.loop.rounds):
        if run.is_committed(r, EVAL):
            rows.append(run.manifest(r, EVAL))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("| round | pairs | win rate vs base | mean score | mean length (base) | swap s | rollout s | train s "
            "| round s |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for m in rows:
        t = m.get("timings_s", {})
        lines.append(f"| {m['round']} | {m['pairs']} | {m['win_rate']:.3f} ± {m['win_rate_stderr']:.3f} "
                     f"| {m['mean_score']:.3f} | {m['mean_length']:.1f} ({m['mean_base_length']:.1f}) "
                     f"| {m['swap_s']:.3f} | {t.get('rollout', 0):.0f} | {t.get('train', 0):.0f} "
                     f"| {t.get('round', 0):.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Any) -> bool:
    """Win rate, score and length per round as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no report.png")
        return False
    rounds = [m["round"] for m in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key, title in zip(axes, ("win_rate", "mean_score", "mean_length"),
                              ("win rate vs base", "mean judge score", "mean answer length (tokens)")):
        ax.plot(rounds, [m[key] for m in rows], marker="o")
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_xticks(rounds)
    axes[0].axhline(0.5, color="grey", linestyle="--", linewidth=1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(recipe: Recipe, run: RunDir) -> list[dict[str, Any]]:
    """Rewrite report.md, report.png and metrics.jsonl's round rows from the committed rounds."""
    rows = round_rows(recipe, run)
    if not rows:
        return rows
    has_plot = plot(rows, run.root / "report.png")
    text = [f"# prefloop run: {recipe.name}", "", f"Run directory: `{run.root}`", "",
            "Win rate: the round's answers to the held-out prompts against the base model's, judged by the "
            f"recipe's scorer (`{recipe.scorer.kind}`); ties count half. Length is shown because PairRM-style "
            "judges favour longer answers.", "", format_table(rows), ""]
    if has_plot:
        text += ["![per-round metrics](report.png)", ""]
    text += ["Per round: `round_R/rollout/` (candidates, pairs, KTO examples), `round_R/model/` (the model), "
             "`round_R/eval/` (answers, `alpaca_eval.json`).", ""]
    text += ["The same with answers side by side (base model and every round, sample of held-out prompts): "
             "[report.html](report.html).", ""]
    run.save_text("report.md", "\n".join(text))
    report_html.write_html(recipe.name, run, rows)
    run.save_text("rounds.jsonl", "".join(json.dumps(m, default=str) + "\n" for m in rows))
    return rows

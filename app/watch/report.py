"""The run's report: ``RUN_DIR/report.md`` (a table over rounds), ``report.png``, ``report.html`` (self-contained,
with answers side by side: ``app/watch/report_html.py``) and ``rounds.jsonl``.

Everything here is read back from the committed stages' manifests, so a report written after a resume is
the same as one written in a single go.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from prefloop.app.storage.rundir import EVAL, REPORT_MD, REPORT_PNG, ROUNDS_FILE, RunDir
from prefloop.app.watch import report_html
from prefloop.app.watch.report_leaderboard import report_section
from prefloop.core.config import Recipe

log = logging.getLogger(__name__)


def round_rows(recipe: Recipe, run: RunDir) -> list[dict[str, Any]]:
    rows = []
    for r in range(recipe.loop.rounds):
        if run.is_committed(r, EVAL):
            rows.append(run.manifest(r, EVAL))
    return rows


def _num(m: dict[str, Any], key: str, fmt: str = ".3f") -> str:
    value = m.get(key)
    return "-" if value is None else format(value, fmt)


def diverging_rounds(rows: list[dict[str, Any]]) -> list[int]:
    """Rounds where the training judge's win rate rose over the previous round's while the eval judge's did not:
    the signature of the policy exploiting its training signal (reward hacking)."""
    out = []
    for prev, cur in zip(rows, rows[1:]):
        if None in (prev.get("scorer_win_rate"), cur.get("scorer_win_rate")):
            continue
        if cur["scorer_win_rate"] > prev["scorer_win_rate"] and cur["win_rate"] <= prev["win_rate"]:
            out.append(cur["round"])
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per round: both judges' win rates vs base, LC win rate, length / repetition / truncation (base in
    brackets), best-of-N if measured, and times. A round flagged by ``diverging_rounds`` is marked ``(!)``."""
    flagged = set(diverging_rounds(rows))
    best = any("best_of_win_rate" in m for m in rows)
    head = ["round", "pairs", "win rate (eval judge)", "training judge", "LC win rate", "length (base)",
            "repetition (base)", "truncated (base)", "distinct-2 (base)"] + (["best-of-N"] if best else []) + \
        ["swap s", "rollout s", "train s", "round s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in rows:
        t = m.get("timings_s", {})
        lc = _num(m, "lc_win_rate") + (" (unstable)" if m.get("lc_unstable") else "")
        cells = [f"{m['round']}{' (!)' if m['round'] in flagged else ''}", str(m["pairs"]),
                 f"{m['win_rate']:.3f} ± {m['win_rate_stderr']:.3f}",
                 _num(m, "scorer_win_rate", ".3f"), lc,
                 f"{m['mean_length']:.1f} ({m.get('base_mean_length', m.get('mean_base_length', 0)):.1f})",
                 f"{_num(m, 'repetition_rate', '.2f')} ({_num(m, 'base_repetition_rate', '.2f')})",
                 f"{_num(m, 'truncation_rate', '.2f')} ({_num(m, 'base_truncation_rate', '.2f')})",
                 f"{_num(m, 'distinct_2', '.2f')} ({_num(m, 'base_distinct_2', '.2f')})"]
        if best:
            cells.append(f"{m['best_of_win_rate']:.3f} (N={m['best_of_n']})" if "best_of_win_rate" in m else "-")
        cells += [f"{m['swap_s']:.3f}", f"{t.get('rollout', 0):.0f}", f"{t.get('train', 0):.0f}",
                  f"{t.get('round', 0):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(recipe: Recipe, rows: list[dict[str, Any]]) -> list[str]:
    """The lines under the title: who judged, the independence warning, rounds flagged for reward hacking."""
    judge = rows[-1].get("judge", recipe.scorer.kind)
    text = [f"Win rate: the round's answers to the held-out prompts against the base model's, judged by the eval "
            f"judge (`{judge}`); ties count half. Beside it the training scorer's (`{recipe.scorer.kind}`) verdict "
            "on the same answers, the length-controlled win rate (AlpacaEval-LC style: the judge's preference "
            "at equal length), and the signals of reward hacking: answer length, share of repeated sentences, "
            "share of answers cut at max_tokens, distinct bigrams, each with the base model's in brackets.", ""]
    if not rows[-1].get("judge_independent", False):
        text += ["**Warning: the eval judge is the training scorer, so this win rate cannot show reward hacking. "
                 "Set `eval.judge` to a judge that did not train the model.**", ""]
    flagged = diverging_rounds(rows)
    if flagged:
        text += [f"**(!) Round(s) {', '.join(map(str, flagged))}: the training judge's win rate rose while the eval "
                 "judge's did not: the policy may be exploiting its training signal.**", ""]
    if any(m.get("lc_unstable") for m in rows):
        reasons = sorted({m.get("lc_unstable_reason") or "" for m in rows if m.get("lc_unstable")})
        text += [f"LC win rate marked unstable: {'; '.join(r for r in reasons if r)}.", ""]
    return text


def plot(rows: list[dict[str, Any]], path: Any) -> bool:
    """Both judges' win rates (and LC), length and repetition per round, round vs base, as a PNG; False when
    matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no report.png")
        return False
    rounds = [m["round"] for m in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = (("win rate vs base", (("win_rate", "eval judge"), ("scorer_win_rate", "training judge"),
                                    ("lc_win_rate", "LC (eval judge)"))),
              ("mean answer length (tokens)", (("mean_length", "round"), ("base_mean_length", "base"))),
              ("repeated sentences (share)", (("repetition_rate", "round"), ("base_repetition_rate", "base"))))
    for ax, (title, series) in zip(axes, panels):
        for key, label in series:
            values = [m.get(key) for m in rows]
            if all(v is not None for v in values):
                ax.plot(rounds, values, marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_xticks(rounds)
        ax.legend(fontsize=7)
    axes[0].axhline(0.5, color="grey", linestyle="--", linewidth=1)
    for r in diverging_rounds(rows):
        axes[0].axvspan(r - 0.3, r + 0.3, color="red", alpha=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(recipe: Recipe, run: RunDir) -> list[dict[str, Any]]:
    """Rewrite report.md, report.png and metrics.jsonl's round rows from the committed rounds."""
    rows = round_rows(recipe, run)
    if not rows:
        return rows
    has_plot = plot(rows, run.root / REPORT_PNG)
    text = [f"# prefloop run: {recipe.name}", "", f"Run directory: `{run.root}`", "", *notes(recipe, rows),
            format_table(rows), ""]
    from prefloop.app.judging.ifeval_judge import report_tables

    text += report_tables(rows)  # the ifeval judge's figures and instruction table (none for other judges)
    text += report_section(rows)  # eval.leaderboard: lm_eval's scores beside the card's (none without it)
    from prefloop.app.rounds import eval_sets

    text += eval_sets.report_tables(rows)  # every named eval set side by side (none without eval.sets)
    if has_plot:
        text += ["![per-round metrics](report.png)", ""]
    text += ["Per round: `round_R/rollout/` (candidates, pairs, KTO examples), `round_R/model/` (the model), "
             "`round_R/eval/` (answers, `alpaca_eval.json`).", ""]
    text += ["The same with answers side by side (base model and every round, sample of held-out prompts): "
             "[report.html](report.html).", ""]
    run.save_text(REPORT_MD, "\n".join(text))
    report_html.write_html(recipe.name, run, rows)
    run.save_text(ROUNDS_FILE, "".join(json.dumps(m, default=str) + "\n" for m in rows))
    return rows

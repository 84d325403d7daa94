"""Evaluation arithmetic: win rate of a model against a baseline from a judge's paired scores.

``win_rate = (wins + 0.5 * ties) / n``, AlpacaEval's convention for ties. The standard error (that of the mean
per-prompt preference, ``core.eval_metrics.win_rate``; the binomial ``sqrt(p (1 - p) / n)`` when there are no
ties) is reported beside it so a user can tell a real gain from noise on few prompts.
"""

from __future__ import annotations

from typing import Sequence

from prefloop.core.eval_metrics import preference, win_rate


def summarize_comparison(scores: Sequence[tuple[float, float]], lengths: Sequence[int],
                         base_lengths: Sequence[int]) -> dict[str, float]:
    """Win/tie/loss counts, win rate (+ standard error), mean scores and mean lengths of both sides."""
    n = len(scores)
    if n == 0:
        raise ValueError("no comparisons to summarize")
    if not (len(lengths) == len(base_lengths) == n):
        raise ValueError(f"{n} comparisons but {len(lengths)} / {len(base_lengths)} lengths")
    wins = sum(1 for a, b in scores if a > b)
    ties = sum(1 for a, b in scores if a == b)
    rate, stderr = win_rate([preference(a, b) for a, b in scores])
    return {
        "n": n, "wins": wins, "ties": ties, "losses": n - wins - ties,
        "win_rate": rate, "win_rate_stderr": stderr,
        "mean_score": sum(a for a, _ in scores) / n, "mean_base_score": sum(b for _, b in scores) / n,
        "mean_length": sum(lengths) / n, "mean_base_length": sum(base_lengths) / n,
    }

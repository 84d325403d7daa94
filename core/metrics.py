"""Evaluation arithmetic: win rate of a model against a baseline from a judge's paired scores.

``win_rate = (wins + 0.5 * ties) / n``, AlpacaEval's convention for ties. The standard error
``sqrt(p (1 - p) / n)`` is reported beside it so a user can tell a real gain from noise on few prompts.
"""

from __future__ import annotations

import math
from typing import Sequence


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
    rate = (wins + 0.5 * ties) / n
    return {
        "n": n, "wins": wins, "ties": ties, "losses": n - wins - ties,
        "win_rate": rate, "win_rate_stderr": math.sqrt(rate * (1 - rate) / n),
        "mean_score": sum(a for a, _ in scores) / n, "mean_base_score": sum(b for _, b in scores) / n,
        "mean_length": sum(lengths) / n, "mean_base_length": sum(base_lengths) / n,
    }

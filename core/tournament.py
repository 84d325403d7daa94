"""Best and worst of N candidates with a pairwise judge, in about 3N/2 comparisons instead of N(N-1).

DPO-style selection needs only the best and the worst candidate of each prompt, but ranking with a pairwise
model (PairRM) compares every ordered pair: N(N-1) judge calls per prompt (20 at N = 5). The classic
simultaneous min-max tournament finds both with ceil(3N/2) - 2 comparisons: pair the candidates up, then run
a knockout for the best among the pair winners and one for the worst among the pair losers (an odd one out
enters both). Each comparison is one call of the judge; PairRM's own ``compare`` already scores both orders
([A,B] and [B,A]) and averages them, so position bias cancels as in the full ranking.

Rounds are batched across prompts: ``compare`` receives every comparison of a round, for all prompts at once
(the caller batches them by length), so the number of judge calls is the number of rounds (about
1 + 2 log2 N), not the number of prompts.

The result per prompt: ``best``, ``worst`` and ``margin``, the judge's logit of best over worst. Where the two
met in the tournament that logit is reused; otherwise one closing best-vs-worst comparison is made (a single
extra round, only for the prompts that need it). Scores for the selection step are
``+margin/2`` (best), ``-margin/2`` (worst) and 0 for the rest, so argmax / argmin and the margin agree with the
tournament.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

# compare([(prompt_index, i, j), ...]) -> [logit that candidate i beats candidate j, ...]
CompareFn = Callable[[list[tuple[int, int, int]]], list[float]]


@dataclass
class _Bracket:
    """One prompt's state: the contenders for best and for worst still in play, and the logits seen."""

    up: list[int]
    down: list[int]
    met: dict[tuple[int, int], float] = field(default_factory=dict)  # (i, j) -> logit i over j


def comparisons_needed(n: int) -> int:
    """ceil(3n/2) - 2 for n >= 2 (without the rare closing best-vs-worst comparison)."""
    if n < 2:
        raise ValueError(f"a tournament needs at least 2 candidates, got {n}")
    return (3 * n + 1) // 2 - 2


def min_max_tournament(sizes: list[int], compare: CompareFn) -> list[tuple[int, int, float]]:
    """(best, worst, margin) for each prompt, ``sizes[p]`` candidates each; see the module docstring."""
    brackets = [_first_round_entry(n) for n in sizes]
    pairs = [(p, i, i + 1) for p, n in enumerate(sizes) for i in range(0, n - 1, 2)]
    for (p, i, j), logit in zip(pairs, _call(compare, pairs)):
        b = brackets[p]
        b.met[(i, j)] = logit
        win, lose = (i, j) if logit >= 0 else (j, i)
        b.up.append(win)
        b.down.append(lose)
    while any(len(b.up) > 1 or len(b.down) > 1 for b in brackets):
        todo = []
        for p, b in enumerate(brackets):
            todo += [(p, b.up[k], b.up[k + 1], "up") for k in range(0, len(b.up) - 1, 2)]
            todo += [(p, b.down[k], b.down[k + 1], "down") for k in range(0, len(b.down) - 1, 2)]
        logits = _call(compare, [(p, i, j) for p, i, j, _ in todo])
        nxt = [_Bracket(b.up[len(b.up) - len(b.up) % 2:], b.down[len(b.down) - len(b.down) % 2:], b.met)
               for b in brackets]  # an odd contender gets a bye to the next round
        for (p, i, j, side), logit in zip(todo, logits):
            brackets[p].met[(i, j)] = logit
            if side == "up":
                nxt[p].up.insert(0, i if logit >= 0 else j)
            else:
                nxt[p].down.insert(0, j if logit >= 0 else i)
        brackets = nxt
    return _margins(brackets, compare)


def _first_round_entry(n: int) -> _Bracket:
    if n < 2:
        raise ValueError(f"a tournament needs at least 2 candidates, got {n}")
    odd = [n - 1] if n % 2 else []  # the odd one out enters both knockouts
    return _Bracket(list(odd), list(odd))


def _margins(brackets: list[_Bracket], compare: CompareFn) -> list[tuple[int, int, float]]:
    """The best-over-worst logit, from their meeting or one closing comparison."""
    out: list[tuple[int, int, float] | None] = []
    closing = []
    for p, b in enumerate(brackets):
        best, worst = b.up[0], b.down[0]
        if (best, worst) in b.met:
            out.append((best, worst, b.met[(best, worst)]))
        elif (worst, best) in b.met:
            out.append((best, worst, -b.met[(worst, best)]))
        else:
            out.append(None)
            closing.append((p, best, worst))
    for (p, best, worst), logit in zip(closing, _call(compare, closing)):
        out[p] = (best, worst, logit)
    return out  # type: ignore[return-value]


def _call(compare: CompareFn, todo: list[tuple[int, int, int]]) -> list[float]:
    if not todo:
        return []
    logits = list(compare(todo))
    if len(logits) != len(todo):
        raise RuntimeError(f"judge returned {len(logits)} logits for {len(todo)} comparisons")
    return [float(x) for x in logits]


def tournament_scores(n: int, best: int, worst: int, margin: float) -> list[float]:
    """Scores for the selection step: +margin/2 for the best, -margin/2 for the worst, 0 for the others."""
    scores = [0.0] * n
    if best != worst:  # all-tied candidates can leave one contender in both knockouts: no pair then
        scores[best], scores[worst] = margin / 2, -margin / 2
    return scores

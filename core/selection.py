"""Selection: scored candidates -> DPO pairs (best vs worst) and KTO examples (desirable / undesirable).

This is the Snorkel / Contextual-KTO recipe's step: for each prompt, the highest-scored of N samples is
``chosen`` and the lowest ``rejected``; for KTO, the best is a desirable example and the worst an undesirable
one. Pure functions; the shells feed them lists and write what they return.

Where it departs from "argmax / argmin":
- ``length_penalty``: the score used for selection is ``score - length_penalty * num_tokens``, because
  PairRM-style judges favour long answers and DPO would learn verbosity from them.
- ties (several candidates share the best or the worst effective score): ``shortest`` takes the shorter best
  and the longer worst (again against length bias), ``first`` takes sampling order, ``skip`` drops the prompt.
- a prompt whose margin (best - worst) is below ``min_margin``, is zero, or whose best and worst texts are
  identical forms no pair; it is kept in the candidates table with the reason in ``pair_status``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

PAIRED = "paired"


@dataclass(frozen=True)
class Choice:
    """Which candidates were picked for one prompt, or why none were."""

    status: str  # "paired", or the reason no pair was formed
    best: int | None = None
    worst: int | None = None
    margin: float = 0.0  # best - worst, in effective (length-penalised) score


def effective_scores(scores: Sequence[float], lengths: Sequence[int], length_penalty: float) -> list[float]:
    """Scores after the length penalty: ``score_i - length_penalty * length_i``."""
    if len(scores) != len(lengths):
        raise ValueError(f"{len(scores)} scores but {len(lengths)} lengths")
    return [float(s) - length_penalty * int(n) for s, n in zip(scores, lengths)]


def _pick(indices: list[int], lengths: Sequence[int], prefer_short: bool, tie_break: str) -> int | None:
    if len(indices) == 1 or tie_break == "first":
        return indices[0]
    if tie_break == "skip":
        return None
    # "shortest": the shortest among the best, the longest among the worst; then sampling order.
    key = (lambda i: (lengths[i], i)) if prefer_short else (lambda i: (-lengths[i], i))
    return min(indices, key=key)


def choose_pair(scores: Sequence[float], lengths: Sequence[int], texts: Sequence[str], *,
                tie_break: str = "shortest", min_margin: float = 0.0, length_penalty: float = 0.0) -> Choice:
    """Pick (best, worst) indices among one prompt's candidates, or say why there is no pair."""
    if len(texts) != len(scores):
        raise ValueError(f"{len(scores)} scores but {len(texts)} texts")
    if len(scores) < 2:
        return Choice("fewer than 2 candidates")
    eff = effective_scores(scores, lengths, length_penalty)
    top, bottom = max(eff), min(eff)
    margin = top - bottom
    if margin <= 0.0:
        return Choice("all candidates tie", margin=0.0)
    if margin < min_margin:
        return Choice(f"margin {margin:.4g} below min_margin {min_margin:g}", margin=margin)
    best = _pick([i for i, e in enumerate(eff) if e == top], lengths, True, tie_break)
    worst = _pick([i for i, e in enumerate(eff) if e == bottom], lengths, False, tie_break)
    if best is None or worst is None:
        return Choice("tie for best or worst (tie_break=skip)", margin=margin)
    if texts[best] == texts[worst]:
        return Choice("best and worst texts are identical", margin=margin)
    return Choice(PAIRED, best, worst, margin)


def dpo_pair(prompt_id: str, prompt: str, messages: list, texts: Sequence[str], scores: Sequence[float],
             choice: Choice) -> dict:
    """A DPO row in TRL's ``prompt/chosen/rejected`` convention, plus ids and scores."""
    assert choice.status == PAIRED
    return {
        "prompt_id": prompt_id, "prompt": prompt, "messages": messages,
        "chosen": texts[choice.best], "rejected": texts[choice.worst],
        "score_chosen": float(scores[choice.best]), "score_rejected": float(scores[choice.worst]),
        "margin": float(choice.margin),
    }


def kto_examples(prompt_id: str, prompt: str, messages: list, texts: Sequence[str], scores: Sequence[float],
                 choice: Choice) -> list[dict]:
    """Two KTO rows in TRL's ``prompt/completion/label`` convention: best desirable, worst undesirable."""
    assert choice.status == PAIRED
    return [
        {"prompt_id": prompt_id, "prompt": prompt, "messages": messages, "completion": texts[i],
         "label": label, "score": float(scores[i])}
        for i, label in ((choice.best, True), (choice.worst, False))
    ]

"""Evaluation metrics of a round's held-out answers: win rate, length-controlled win rate, reward-hacking signals.

Pure numpy, no ray / vllm. Everything works on per-prompt *preferences* ``p`` in [0, 1] for the round's answer
over the base model's answer: 1 = win, 0 = loss, 0.5 = tie (AlpacaEval's convention); an LLM judge that reads
log-probabilities gives values in between.

- ``win_rate``: ``mean(p)``; its standard error ``sqrt(var(p) / n)`` with the population variance, which for
  win/loss-only outcomes is exactly the binomial ``sqrt(w (1 - w) / n)``; ties lower it, as they should.
- ``lc_win_rate``: the idea of AlpacaEval-LC (Dubois et al. 2024, arXiv 2404.04475): fit
  ``logit P(round preferred) = a + b * z`` with ``z = (len_round - len_base) / sd(len_round - len_base)``
  (tokens; scaled, not centred, so ``z = 0`` still means "equal length"), and report ``sigmoid(a)``, the
  preference the judge would have with no length difference. Departures from the paper: one model against one
  baseline, so there is no per-model term and no instruction-difficulty term, and ``z`` enters linearly (the
  paper uses ``tanh(z)``) - few prompts cannot support more. The fit is a plain logistic regression with
  fractional targets, solved by Newton's method (IRLS) with step halving. ``lc_unstable`` is set, with a reason,
  when the fit cannot be trusted: fewer than ``MIN_LC_PROMPTS`` prompts (the fit is still reported), or it
  cannot be fitted at all - every preference equal, zero variance of the length difference, (quasi-)complete
  separation by length, or no convergence - in which case ``lc_win_rate`` falls back to the plain win rate.
- ``truncation_rate``: share of answers whose finish reason is ``"length"`` (stopped at max_tokens, no EOS).
- ``repetition_rate``: per answer, the share of its sentences that repeat an earlier sentence of the same
  answer, averaged over answers. Sentences: the text split after ``.``, ``!`` or ``?`` (runs of them count as
  one end) and at line breaks; each is normalised to lower case with every run of non-alphanumeric characters
  turned into one space and the ends stripped; empty ones are dropped. An answer with no sentence counts 0.
- ``distinct_2``: distinct word bigrams / all word bigrams over all answers (words: lower-case ``[a-z0-9']+``
  runs; bigrams never span two answers). 0 when there is no bigram at all.
- ``mean_length``: mean answer length in tokens.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MIN_LC_PROMPTS = 30  # below this, a 2-parameter fit on per-prompt outcomes swings with a single prompt
_MAX_COEF = 12.0     # |logit| beyond this means probabilities of 1 - 6e-6: the fit is running off to infinity
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|[.!?]+$|\n+")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_WORD = re.compile(r"[a-z0-9']+")


def preference(score: float, base_score: float) -> float:
    """A scalar judge's verdict as a preference: 1 win, 0.5 tie, 0 loss."""
    return 1.0 if score > base_score else 0.5 if score == base_score else 0.0


def win_rate(prefs: Sequence[float]) -> tuple[float, float]:
    """``(mean(p), sqrt(var(p) / n))`` with ties counted half; raises on no preferences or one outside [0, 1]."""
    p = np.asarray(prefs, dtype=np.float64)
    if p.size == 0:
        raise ValueError("no preferences to average")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"preferences must lie in [0, 1], got {p[(p < 0) | (p > 1)][:3].tolist()}")
    return float(p.mean()), float(math.sqrt(p.var() / p.size))


@dataclass(frozen=True)
class LCResult:
    """The length-controlled win rate, the fitted coefficients (None when not fitted) and why it is unstable."""

    lc_win_rate: float
    intercept: float | None
    slope: float | None
    unstable: bool
    reason: str | None


def _fit_logistic(z: np.ndarray, y: np.ndarray, max_iter: int = 100, tol: float = 1e-10) -> tuple[float, float] | None:
    """Maximum-likelihood ``(a, b)`` of ``logit y = a + b z`` for targets in [0, 1]; None if it does not converge."""
    x = np.column_stack([np.ones_like(z), z])
    beta = np.zeros(2)

    def loglik(b: np.ndarray) -> float:
        eta = x @ b
        return float(np.sum(y * eta - np.logaddexp(0.0, eta)))

    current = loglik(beta)
    for _ in range(max_iter):
        mu = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (y - mu)
        hess = x.T @ (x * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        scale = 1.0
        while scale > 1e-6 and loglik(beta + scale * step) < current - 1e-12:
            scale /= 2  # step halving keeps every Newton step an ascent step
        beta = beta + scale * step
        new = loglik(beta)
        if np.max(np.abs(beta)) > _MAX_COEF:
            return None
        if abs(new - current) < tol and np.max(np.abs(scale * step)) < 1e-7:
            return float(beta[0]), float(beta[1])
        current = new
    return None


def _separated(z: np.ndarray, y: np.ndarray) -> bool:
    """(Quasi-)complete separation of win/loss outcomes by length: no maximum-likelihood fit exists."""
    if np.any((y > 0) & (y < 1)):
        return False  # a tie or a soft preference pulls both ways, so the likelihood has a finite maximum
    wins, losses = z[y == 1], z[y == 0]
    return wins.min() >= losses.max() or wins.max() <= losses.min()


def lc_win_rate(prefs: Sequence[float], lengths: Sequence[float], base_lengths: Sequence[float]) -> LCResult:
    """AlpacaEval-LC-style length-controlled win rate (see the module docstring)."""
    y = np.asarray(prefs, dtype=np.float64)
    diff = np.asarray(lengths, dtype=np.float64) - np.asarray(base_lengths, dtype=np.float64)
    if not (y.size == diff.size):
        raise ValueError(f"{y.size} preferences but {diff.size} length differences")
    plain, _ = win_rate(y)

    def fallback(reason: str) -> LCResult:
        return LCResult(plain, None, None, True, f"{reason}; lc_win_rate is the plain win rate")

    if np.all(y == y[0]):
        return fallback(f"every preference is {y[0]:g}")
    sd = float(diff.std())
    if sd == 0.0:
        return fallback("the length difference has zero variance")
    z = diff / sd
    if _separated(z, y):
        return fallback("wins and losses are separated by length")
    fit = _fit_logistic(z, y)
    if fit is None:
        return fallback("the logistic fit did not converge")
    a, b = fit
    few = y.size < MIN_LC_PROMPTS
    reason = f"only {y.size} prompts (< {MIN_LC_PROMPTS})" if few else None
    return LCResult(float(1.0 / (1.0 + math.exp(-a))), a, b, few, reason)


def truncation_rate(finish_reasons: Sequence[str]) -> float:
    """Share of answers that stopped at max_tokens (finish reason ``"length"``) instead of at EOS or a stop."""
    if not finish_reasons:
        raise ValueError("no finish reasons")
    return sum(1 for f in finish_reasons if f == "length") / len(finish_reasons)


def sentences(text: str) -> list[str]:
    """The normalised sentences of ``text`` (see the module docstring)."""
    out = []
    for part in _SENTENCE_END.split(text):
        norm = _NON_ALNUM.sub(" ", part.lower()).strip()
        if norm:
            out.append(norm)
    return out


def repetition_rate(texts: Sequence[str]) -> float:
    """Mean over answers of the share of sentences that repeat an earlier sentence of the same answer."""
    if not texts:
        raise ValueError("no answers")
    rates = []
    for text in texts:
        sents, seen, repeats = sentences(text), set(), 0
        for s in sents:
            repeats += s in seen
            seen.add(s)
        rates.append(repeats / len(sents) if sents else 0.0)
    return sum(rates) / len(rates)


def distinct_2(texts: Sequence[str]) -> float:
    """Distinct word bigrams / all word bigrams, over all answers."""
    bigrams = []
    for text in texts:
        words = _WORD.findall(text.lower())
        bigrams.extend(zip(words, words[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def mean_length(lengths: Sequence[float]) -> float:
    if not lengths:
        raise ValueError("no lengths")
    return float(sum(lengths)) / len(lengths)


def answer_metrics(texts: Sequence[str], lengths: Sequence[int], finish_reasons: Sequence[str],
                   prefix: str = "") -> dict[str, float]:
    """``mean_length``, ``truncation_rate``, ``repetition_rate``, ``distinct_2`` of one side's answers."""
    if not (len(texts) == len(lengths) == len(finish_reasons)):
        raise ValueError(f"{len(texts)} answers, {len(lengths)} lengths, {len(finish_reasons)} finish reasons")
    return {f"{prefix}mean_length": mean_length(lengths), f"{prefix}truncation_rate": truncation_rate(finish_reasons),
            f"{prefix}repetition_rate": repetition_rate(texts), f"{prefix}distinct_2": distinct_2(texts)}

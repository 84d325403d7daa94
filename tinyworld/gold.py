"""The tiny world's gold preference, and the measures the demo is graded by.

``gold_score(prompt, completion)`` is what the demo world wants from an answer; the tiny PairRM and reward
model only ever see noisy labels of it (``noisy_order``), so they are proxies, and the demo recipe's eval
judge (``eval.judge: {kind: function, function: prefloop.tinyworld.gold:gold_score}``) is this function:
the report then shows the proxy's verdict and the gold one side by side, and reward hacking of the proxy
(repeating a sentence it likes, drifting in ways it cannot see) shows up as a gap between them.

    gold = 0.5 * relevance + 0.5 * coverage - repetition - length_penalty - gibberish      (in [-2.4, 1])

- relevance: of the answer's topic words (any topic's name or vocabulary), the share that belong to a
  topic the prompt names; 0 when it has none or the prompt names no topic.
- coverage: distinct words of the prompt's topics (names included) the answer uses, ``min(k, 6) / 6``:
  an answer should say several different things about the topic, not one thing.
- repetition: the share of the answer's sentences that repeat an earlier sentence of the same answer
  (compared as lower-case words), the issue's ``repetition_rate`` of one answer.
- length_penalty: 0 for 10..30 words; 0.03 per word short of 10 or past 30, at most 0.6.
- gibberish: the share of the answer's words that are not words of this world (``topics.LEXICON``).
"""

from __future__ import annotations

import math
import random
import re

from prefloop.tinyworld.topics import LEXICON, WORD_TOPIC, prompt_topics, words_of

COVERAGE_WORDS = 6  # distinct topic words for full coverage
MIN_WORDS, MAX_WORDS = 10, 30  # the moderate length: no penalty in between
LENGTH_RATE, LENGTH_CAP = 0.03, 0.6
LABEL_TEMPERATURE = 0.1  # the proxies' label noise (see noisy_order)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences_of(text: str) -> list[str]:
    """The answer's sentences, each as its lower-case words joined by spaces (empty ones dropped)."""
    out = []
    for part in _SENTENCE_END.split(text.strip()):
        words = words_of(part)
        if words:
            out.append(" ".join(words))
    return out


def repetition(text: str) -> float:
    """Share of sentences that repeat an earlier sentence of the same text (0 for no sentence)."""
    seen: set[str] = set()
    repeats, sents = 0, sentences_of(text)
    for s in sents:
        repeats += s in seen
        seen.add(s)
    return repeats / len(sents) if sents else 0.0


def relevance(prompt: str, text: str) -> float:
    asked = prompt_topics(prompt)
    topical = [WORD_TOPIC[w] for w in words_of(text) if w in WORD_TOPIC]
    return sum(t in asked for t in topical) / len(topical) if topical and asked else 0.0


def coverage(prompt: str, text: str) -> float:
    asked = prompt_topics(prompt)
    used = {w for w in words_of(text) if WORD_TOPIC.get(w) in asked}
    return min(len(used), COVERAGE_WORDS) / COVERAGE_WORDS


def length_penalty(n_words: int) -> float:
    short, over = max(0, MIN_WORDS - n_words), max(0, n_words - MAX_WORDS)
    return min(LENGTH_CAP, LENGTH_RATE * (short + over))


def gold_score(prompt: str, completion: str) -> float:
    """The gold preference of the demo world (higher is better); see the module doc."""
    words = words_of(completion)
    gibberish = sum(w not in LEXICON for w in words) / len(words) if words else 0.0
    return (0.5 * relevance(prompt, completion) + 0.5 * coverage(prompt, completion)
            - repetition(completion) - length_penalty(len(words)) - gibberish)


def noisy_order(rng: random.Random, prompt: str, a: str, b: str,
                temperature: float = LABEL_TEMPERATURE) -> tuple[str, str, float]:
    """A noisy gold label for the pair: (preferred, other, gold gap), the preferred one drawn by
    Bradley-Terry on the gold scores, ``P(a preferred) = sigmoid((gold(a) - gold(b)) / temperature)``.

    So a pair 0.1 apart in gold is labelled the wrong way round 27% of the time, 0.3 apart 5%, 0.5 apart 0.7%:
    the proxies learn the gold preference as human raters' labels teach a real reward model, with most of
    the noise where the answers are close. The gap is signed: negative when the label went against gold.
    """
    ga, gb = gold_score(prompt, a), gold_score(prompt, b)
    p_a = 1.0 / (1.0 + math.exp(-(ga - gb) / temperature))
    return (a, b, ga - gb) if rng.random() < p_a else (b, a, gb - ga)


def win_rate(prompts: list[str], answers: list[str], base: list[str]) -> float:
    """Gold win rate of ``answers`` over ``base`` on the same prompts; ties count half."""
    wins = 0.0
    for p, a, b in zip(prompts, answers, base, strict=True):
        ga, gb = gold_score(p, a), gold_score(p, b)
        wins += 1.0 if ga > gb else 0.5 if ga == gb else 0.0
    return wins / len(prompts) if prompts else float("nan")


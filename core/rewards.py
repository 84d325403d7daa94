"""Example reward functions for ``scorer.kind: function`` (``scorer.function: prefloop.core.rewards:NAME``).

A reward function takes ``(prompt: str, completion: str)`` and returns a finite float; prefloop calls it once
per candidate inside a scorer actor. These two are deliberately simple, documented preferences that a tiny
policy can learn in a few steps, used by the ReMax learning test and handy for smoke-testing a cluster:
swap in your own module (it must be importable on every node).
"""

from __future__ import annotations

WORD_BUDGET = 24


def brevity(prompt: str, completion: str) -> float:
    """1.0 for an empty answer, falling linearly to 0.0 at ``WORD_BUDGET`` words and beyond."""
    return max(0.0, 1.0 - len(completion.split()) / WORD_BUDGET)


def verbosity(prompt: str, completion: str) -> float:
    """The opposite preference: 0.0 for an empty answer, rising to 1.0 at ``WORD_BUDGET`` words."""
    return min(1.0, len(completion.split()) / WORD_BUDGET)

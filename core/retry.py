"""One retry loop for every remote call that may fail transiently: a dead actor, an HTTP 429 / 5xx, a storage error.

``retry`` runs ``action`` up to ``attempts`` times. An exception of a ``transient`` type calls ``before_retry``
(log, wait for a restart, back off) and tries again; after the last attempt ``give_up`` turns it into the error
the caller raises, with the transient one as its cause. Any other exception propagates at once.
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def retry(action: Callable[[], T], *, attempts: int, transient: tuple[type[BaseException], ...],
          before_retry: Callable[[int, BaseException], None],
          give_up: Callable[[int, BaseException], BaseException]) -> T:
    """``action()``, retried on ``transient`` errors (see the module docstring). ``before_retry(attempt, error)``
    and ``give_up(attempts_made, error)`` get the 1-based number of the attempt that failed."""
    if attempts < 1:
        raise ValueError(f"retry: attempts must be >= 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except transient as err:
            if attempt == attempts:
                raise give_up(attempt, err) from err
            before_retry(attempt, err)
    raise AssertionError("unreachable")


def backoff_s(attempt: int, first_s: float, cap_s: float = float("inf")) -> float:
    """Exponential backoff before retry number ``attempt`` (1-based): ``first_s``, doubled each time, capped."""
    return min(first_s * 2 ** (attempt - 1), cap_s)

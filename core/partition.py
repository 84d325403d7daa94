"""Deterministic prompt partitions: which rows a round may see.

A row's partition is a hash of its ``prompt_id`` and a seed, never its position: the same prompt lands in the
same partition whatever order the source is read in, on every machine, in every run. The partitions of K are
disjoint and together cover the input. All rows of one prompt (several pairs of a prompt in SHP or HH) share
one partition, so a round never meets a prompt another round trained on.

Used by ``prefloop data prepare`` (the files it writes) and by the rollout (``data.partitions: K`` splits one
prompt file at read time): the same function, so a prepared partition and an in-recipe one agree.

Partition files are numbered from 0. The cards number their per-round files from 1 (Snorkel's
``train_iteration_1..3``): ``data.round_offset: 1`` maps round r to file r + 1 (``round_number``).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")
ROUND = "{round}"


def key_hash(key: str, seed: int) -> int:
    """A 64-bit hash of (seed, key): stable across runs and Python processes (not ``hash()``)."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def partition_of(key: str, k: int, seed: int = 0) -> int:
    """The partition (0 .. k-1) of a row with this key (its prompt_id)."""
    if k < 1:
        raise ValueError(f"the number of partitions must be >= 1, got {k}")
    return key_hash(key, seed) % k


def split(rows: Iterable[T], k: int, seed: int = 0, key: Callable[[T], str] = lambda r: r["prompt_id"]
          ) -> list[list[T]]:
    """``rows`` into k disjoint lists that cover them; each keeps the input order of its rows."""
    parts: list[list[T]] = [[] for _ in range(k)]
    for row in rows:
        parts[partition_of(key(row), k, seed)].append(row)
    return parts


def take(rows: Iterable[T], k: int, index: int, seed: int = 0,
         key: Callable[[T], str] = lambda r: r["prompt_id"]) -> list[T]:
    """Only partition ``index`` of k (what one round reads)."""
    if not 0 <= index < k:
        raise ValueError(f"partition {index} does not exist: there are {k} (0 .. {k - 1})")
    return [r for r in rows if partition_of(key(r), k, seed) == index]


def select_first(rows: Sequence[T], n: int | None, seed: int = 0,
                 key: Callable[[T], str] = lambda r: r["prompt_id"]) -> tuple[list[T], list[T]]:
    """(selected, not selected): the n rows of lowest hash (all rows when n is None), in input order.

    A ``--limit`` that does not depend on the order of the source: the same n prompts for a seed."""
    if n is None or n >= len(rows):
        return list(rows), []
    chosen = set(sorted(range(len(rows)), key=lambda i: (key_hash(key(rows[i]), seed), i))[:n])
    return [r for i, r in enumerate(rows) if i in chosen], [r for i, r in enumerate(rows) if i not in chosen]


def round_number(round_idx: int, offset: int = 0) -> int:
    """The partition (file number) round ``round_idx`` (0-based) reads: round + offset."""
    return round_idx + offset


def round_path(path: str, round_idx: int, offset: int = 0) -> str:
    """``path`` with ``{round}`` replaced by the round's partition number (unchanged without the placeholder)."""
    return path.replace(ROUND, str(round_number(round_idx, offset)))


class RoundPart:
    """Which prompts round ``round_idx`` reads, from the recipe's data section (``DataConfig``-like object):
    the file (``{round}`` filled in) and, under ``data.partitions``, the one partition of it."""

    def __init__(self, data: object, source: str, round_idx: int | None):
        self.round, self.source = round_idx, source
        self.k: int | None = getattr(data, "partitions", None) if round_idx is not None else None
        self.seed: int = getattr(data, "partition_seed", 0)
        offset = getattr(data, "round_offset", 0)
        number = round_number(round_idx, offset) if round_idx is not None else None
        self.path = round_path(source, round_idx, offset) if round_idx is not None else source
        if self.k is not None and number is not None and getattr(data, "reuse_prompts", False):
            number %= self.k  # the recipe allows rounds to cycle over the partitions
        self.number = number if (self.k is not None or ROUND in source) else None

    def select(self, records: Sequence[T], key: Callable[[T], str] = lambda r: r.prompt_id) -> list[T]:
        """The round's records: all of them, or its partition under ``data.partitions``."""
        if self.k is None:
            return list(records)
        return take(records, self.k, self.number, self.seed, key)

    def describe(self, in_partition: int) -> dict:
        """What the rollout manifest says about the round's prompts."""
        return {"source": self.source, "path": self.path, "round": self.round, "partition": self.number,
                "partitions": self.k, "seed": self.seed if self.k is not None else None,
                "prompts_in_partition": in_partition}

"""The driver's share of the streaming rollout: which prompts a round uses, and did each come back exactly once.

The rollout reads its prompt files in Ray Data, twice (``app/rounds/rollout_stream.py``), in pieces of at most
``rollout.block_prompts`` rows. The first pass checks every row inside the readers and sends the driver, per
piece, only each accepted row's (line or row number, prompt_id) and the rejected rows' records. ``PromptIndex`` keeps those numbers and ids (about 150 bytes a prompt: 50k
prompts are a few MB, while the rows themselves never reach the driver) and decides what the in-memory reader
(``core.prompts.read_prompts``) decides, in input order: a prompt_id already accepted earlier is a duplicate
(rejected, naming the first row), then the round's partition, then ``data.limit``. It hands the second pass, per
piece, the numbers of the rows to use.

``ExactlyOnce`` checks the second pass's output as it streams by: every used prompt_id back once with N
candidates, none twice, none that was not sent. It holds the set of ids, not the rows.

One departure from ``read_prompts``: a row that is both a duplicate and over the token budget is rejected for its
length here (the reader checks the budget before the driver sees the id), for being a duplicate there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from prefloop.core.prompt_files import Fields, Piece, Source
from prefloop.core.prompts import Rejected, duplicate_reason


@dataclass
class Decision:
    """What the driver decided after the first pass: counts, the duplicates' records, the rows to use."""

    read: int
    accepted: int
    rejected: int
    in_partition: int
    used_ids: list[str]  # in input order
    keep: dict[int, list[int]]  # piece index -> the line / row numbers to use, ascending
    duplicates: list[Rejected] = field(default_factory=list)


class PromptIndex:
    """Accepted rows' (piece, number, prompt_id) and the count of rejected rows, piece by piece."""

    def __init__(self, sources: Sequence[Source], pieces: Sequence[Piece], fields: Fields = Fields()):
        self.sources, self.pieces, self.fields = list(sources), list(pieces), fields
        self._accepted: list[tuple[int, int, str]] = []
        self._seen: set[int] = set()
        self.rejected = 0

    def add(self, summary: dict[str, Any]) -> list[dict[str, str]]:
        """One piece's summary ``{"piece": i, "accepted": [[number, prompt_id], ...], "rejected": [record, ...]}``;
        returns its rejected records (the caller writes them out)."""
        piece = int(summary["piece"])
        if not 0 <= piece < len(self.pieces):
            raise ValueError(f"a summary names piece {piece}, but there are {len(self.pieces)}")
        if piece in self._seen:
            raise RuntimeError(f"rollout: piece {piece} of the prompt files was read twice")
        self._seen.add(piece)
        self._accepted.extend((piece, int(number), str(pid)) for number, pid in summary["accepted"])
        self.rejected += len(summary["rejected"])
        return summary["rejected"]

    def where(self, piece: int, number: int) -> tuple[str, str]:
        source = self.sources[self.pieces[piece].source]
        return source.file, source.location(number)

    def decide(self, select: Any = None, limit: int | None = None) -> Decision:
        """Duplicates out (the first row in input order keeps the id), then ``select`` (the round's partition:
        a function from the accepted (piece, number, prompt_id) tuples to those of the round), then ``limit``."""
        missing = sorted(set(range(len(self.pieces))) - self._seen)
        if missing:
            raise RuntimeError(f"rollout: {len(missing)} pieces of the prompt files were never read "
                               f"(first: {missing[:5]})")
        first: dict[str, tuple[int, int]] = {}
        unique, duplicates = [], []
        for entry in sorted(self._accepted):  # pieces are in reading order, numbers ascend inside a piece
            piece, number, pid = entry
            if pid in first:
                earlier = ":".join(self.where(*first[pid]))
                duplicates.append(Rejected(*self.where(piece, number), self.fields.id, duplicate_reason(pid, earlier)))
                continue
            first[pid] = (piece, number)
            unique.append(entry)
        del first
        mine = select(unique) if select is not None else unique
        used = mine[:limit] if limit is not None else mine
        keep: dict[int, list[int]] = {}
        for piece, number, _ in used:  # already in input order
            keep.setdefault(piece, []).append(number)
        read = len(self._accepted) + self.rejected
        return Decision(read=read, accepted=len(unique), rejected=self.rejected + len(duplicates),
                        in_partition=len(mine), used_ids=[pid for _, _, pid in used], keep=keep,
                        duplicates=duplicates)


class ExactlyOnce:
    """Every expected prompt_id back exactly once with ``n`` candidates; raise at the first breach."""

    def __init__(self, expected: Iterable[str], n: int):
        self.pending, self.done, self.n = set(expected), set(), n

    def see(self, prompt_id: str, n_candidates: int) -> None:
        if prompt_id in self.done:
            raise RuntimeError(f"rollout: prompt_id {prompt_id} came back twice")
        if prompt_id not in self.pending:
            raise RuntimeError(f"rollout: prompt_id {prompt_id} came back but was never sent")
        if n_candidates != self.n:
            raise RuntimeError(f"rollout: prompt_id {prompt_id} has {n_candidates} candidates, not {self.n}")
        self.pending.remove(prompt_id)
        self.done.add(prompt_id)

    def finish(self) -> int:
        """The number of prompts back; raise if any never came back."""
        if self.pending:
            first = sorted(self.pending)[:5]
            raise RuntimeError(f"rollout: {len(self.pending)} prompts never came back (first: {first})")
        return len(self.done)

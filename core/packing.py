"""Padding-free batches: several (prompt + response) sequences packed into each row, restarting position ids.

A padded batch of sequences of very different lengths spends most of its compute on padding: B rows of the longest
length. Here the sequences are packed, longest first, into the fewest rows of that same longest length (first fit
decreasing), so the linear layers see about the real tokens only and no row's attention is longer than a padded
row's. Transformers (5.x, sdpa/eager attention) reads the packing from ``position_ids`` when no attention mask is
given: positions restart at 0 for each sequence, and a token attends only to the earlier tokens of its own sequence.
The unused tail of a row gets restarting positions too, so it is a separate (ignored) segment that no real token
sees.

Only the positions that predict a response token are scored (``select``): the LM head and the log-softmax run on
those rows of the hidden states alone (prompt positions are skipped), and ``segment`` says which sequence each
scored position belongs to, so ``logprobs.segment_logps`` sums them per sequence.

Pure tensor logic, no model: ``actors/train_model.py`` feeds a ``Packed`` batch to the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Packed:
    """A packed batch of ``n_seqs`` sequences in ``R`` rows of ``C`` tokens.

    input_ids, position_ids: [R, C] long (pad id / restarting positions in the unused tails).
    select: [R, C] bool, True at each position whose next token is a response token of the same sequence;
        ``hidden[select]`` lists the scored positions in row-major order.
    targets, segment: [N] long (N = select.sum()): the predicted token and its sequence index, in that order.
    n_seqs: sequences in the batch (a sequence with no scored token still has an index: its sum is 0).
    tokens: real (non-pad) tokens in the batch.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    select: torch.Tensor
    targets: torch.Tensor
    segment: torch.Tensor
    n_seqs: int
    tokens: int

    def to(self, device: torch.device) -> "Packed":
        moved = {k: getattr(self, k).to(device) for k in ("input_ids", "position_ids", "select", "targets", "segment")}
        return Packed(**moved, n_seqs=self.n_seqs, tokens=self.tokens)


def plan_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First fit decreasing: sequence indices per row, every row's total length <= ``capacity``.

    Deterministic: ties in length keep the input order. Empty sequences are placed nowhere.
    """
    if any(n > capacity for n in lengths):
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit a row of {capacity}")
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        if lengths[i] == 0:
            continue
        row = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
        if row is None:
            rows.append([])
            free.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= lengths[i]
    return rows


def pack_sequences(seqs: Sequence[Sequence[int]], prompt_lengths: Sequence[int], pad_id: int,
                   capacity: int | None = None) -> Packed:
    """Pack ``seqs`` (each prompt + response token ids, the first ``prompt_lengths[i]`` being the prompt).

    ``capacity`` (row length) defaults to the longest sequence: no row is longer than a padded batch's rows.
    """
    if len(seqs) != len(prompt_lengths):
        raise ValueError(f"{len(seqs)} sequences but {len(prompt_lengths)} prompt lengths")
    lengths = [len(s) for s in seqs]
    width = capacity if capacity is not None else max(max(lengths, default=0), 1)
    rows = plan_rows(lengths, width) or [[]]
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    seq_of = torch.full((len(rows), width), -1, dtype=torch.long)  # sequence index per position, -1 in tails
    response = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, members in enumerate(rows):
        col = 0
        for i in members:
            n = lengths[i]
            ids[r, col:col + n] = torch.tensor(list(seqs[i]), dtype=torch.long)
            pos[r, col:col + n] = torch.arange(n)
            seq_of[r, col:col + n] = i
            response[r, col + prompt_lengths[i]:col + n] = True
            col += n
        pos[r, col:] = torch.arange(width - col)  # the tail: its own segment, seen by no real token
    # position t scores token t + 1 when that is a response token of the same sequence
    nxt_response = torch.zeros_like(response)
    nxt_response[:, :-1] = response[:, 1:]
    same = torch.zeros_like(response)
    same[:, :-1] = seq_of[:, 1:] == seq_of[:, :-1]
    select = nxt_response & same
    nxt_ids = torch.full_like(ids, pad_id)
    nxt_ids[:, :-1] = ids[:, 1:]
    return Packed(input_ids=ids, position_ids=pos, select=select, targets=nxt_ids[select], segment=seq_of[select],
                  n_seqs=len(seqs), tokens=sum(lengths))

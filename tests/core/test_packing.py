"""Padding-free packing: row plans, position restarts, the scored positions, hand-checked on small sequences."""

import pytest
import torch

from prefloop.core.packing import pack_sequences, plan_rows


def test_plan_rows_first_fit_decreasing():
    assert plan_rows([3, 5, 2, 4, 1], 5) == [[1], [3, 4], [0, 2]]
    assert plan_rows([2, 2, 2], 6) == [[0, 1, 2]]
    assert plan_rows([0, 3], 3) == [[1]]  # an empty sequence takes no room
    with pytest.raises(ValueError, match="does not fit"):
        plan_rows([4], 3)


def test_pack_layout_positions_and_scored_tokens():
    # A = prompt [10, 11] + response [12, 13]; B = prompt [20] + response [21]; C = prompt [30, 31, 32] + [33, 34]
    seqs = [[10, 11, 12, 13], [20, 21], [30, 31, 32, 33, 34]]
    p = pack_sequences(seqs, [2, 1, 3], pad_id=0)
    # rows of the longest length (5), longest first: [C], [A] then B fits nowhere (A leaves 1) -> its own row
    assert p.input_ids.tolist() == [[30, 31, 32, 33, 34], [10, 11, 12, 13, 0], [20, 21, 0, 0, 0]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 0], [0, 1, 0, 1, 2]]
    # scored: positions whose NEXT token is a response token of the same sequence
    assert p.select.tolist() == [[False, False, True, True, False], [False, True, True, False, False],
                                 [True, False, False, False, False]]
    assert p.targets.tolist() == [33, 34, 12, 13, 21]
    assert p.segment.tolist() == [2, 2, 0, 0, 1]
    assert (p.n_seqs, p.tokens) == (3, 11)


def test_pack_shares_rows_and_never_scores_across_sequences():
    seqs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    p = pack_sequences(seqs, [1, 1, 0], pad_id=0, capacity=9)
    assert p.input_ids.tolist() == [[6, 7, 8, 9, 1, 2, 3, 4, 5]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1]]
    # the third sequence has an empty prompt: its first token is predicted by nothing, the rest are scored;
    # the last token of one sequence never scores the first of the next
    assert p.targets.tolist() == [7, 8, 9, 2, 3, 5]
    assert p.segment.tolist() == [2, 2, 2, 0, 0, 1]


def test_pack_checks_its_inputs():
    with pytest.raises(ValueError, match="prompt lengths"):
        pack_sequences([[1, 2]], [1, 1], pad_id=0)
    with pytest.raises(ValueError, match="does not fit"):
        pack_sequences([[1, 2, 3]], [1], pad_id=0, capacity=2)
    empty = pack_sequences([], [], pad_id=0)
    assert empty.targets.numel() == 0 and empty.n_seqs == 0
    assert isinstance(empty.input_ids, torch.Tensor)

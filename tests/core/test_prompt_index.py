"""The driver's prompt index (core/prompt_index.py): per-piece summaries in any order, duplicates decided in input
order, then the round's share and the limit; and the check that every prompt came back exactly once."""

import pytest

from prefloop.core.prompt_files import Piece, Source
from prefloop.core.prompt_index import ExactlyOnce, PromptIndex

SOURCES = [Source("a.jsonl", "jsonl"), Source("b.parquet", "parquet")]
PIECES = [Piece(0, 1, 3), Piece(0, 4, 3), Piece(1, 0, 2)]


def summaries():
    """Three pieces: a.jsonl lines 1-3 and 4-6, b.parquet rows 0-1; ids x and y repeat across them."""
    return [{"piece": 0, "accepted": [[1, "x"], [3, "y"]], "rejected": [{"line": 2, "reason": "malformed"}]},
            {"piece": 1, "accepted": [[4, "z"], [6, "x"]], "rejected": []},
            {"piece": 2, "accepted": [[0, "y"], [1, "w"]], "rejected": []}]


def test_the_first_row_in_input_order_keeps_the_id_whatever_order_pieces_come_back_in():
    index = PromptIndex(SOURCES, PIECES)
    rejected = [r for s in reversed(summaries()) for r in index.add(s)]
    assert rejected == [{"line": 2, "reason": "malformed"}]  # handed back for the caller to write out
    d = index.decide()
    assert d.used_ids == ["x", "y", "z", "w"] and d.keep == {0: [1, 3], 1: [4], 2: [1]}
    assert (d.read, d.accepted, d.rejected, d.in_partition) == (7, 4, 3, 4)
    assert [(r.file, r.location, r.field) for r in d.duplicates] == [("a.jsonl", "line 6", "prompt_id"),
                                                                     ("b.parquet", "row 0", "prompt_id")]
    assert "a.jsonl:line 1" in d.duplicates[0].reason  # the duplicate names the row that kept the id


def test_the_rounds_share_then_the_limit():
    index = PromptIndex(SOURCES, PIECES)
    for s in summaries():
        index.add(s)
    d = index.decide(select=lambda rows: [r for r in rows if r[2] != "y"], limit=2)
    assert d.used_ids == ["x", "z"] and d.keep == {0: [1], 1: [4]} and d.in_partition == 3 and d.accepted == 4


def test_a_summary_naming_an_unknown_piece_is_refused():
    index = PromptIndex([Source("a.jsonl", "jsonl")], [Piece(0, 1, 5)])
    with pytest.raises(ValueError, match="names piece 3, but there are 1"):
        index.add({"piece": 3, "accepted": [], "rejected": []})


def test_exactly_once():
    once = ExactlyOnce(["a", "b", "c"], 2)
    once.see("a", 2)
    with pytest.raises(RuntimeError, match="prompt_id a came back twice"):
        once.see("a", 2)
    with pytest.raises(RuntimeError, match="prompt_id z came back but was never sent"):
        once.see("z", 2)
    with pytest.raises(RuntimeError, match="prompt_id b has 3 candidates, not 2"):
        once.see("b", 3)
    once.see("b", 2)
    with pytest.raises(RuntimeError, match=r"1 prompts never came back \(first: \['c'\]\)"):
        once.finish()
    once.see("c", 2)
    assert once.finish() == 3

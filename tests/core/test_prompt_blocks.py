"""Pieces checked (core/prompt_blocks.py), against the in-memory reader: files cut into pieces, each piece's rows
checked and tokenised, the driver's index over the summaries (its own tests: test_prompt_files, test_prompt_index).

The piece-wise path (``plan_pieces``, ``check_piece`` per piece, ``PromptIndex.decide``) must decide exactly what
the in-memory ``read_prompts`` decides on the same hostile file, whatever the piece size."""

import json

import pytest

from prefloop.core.partition import take
from prefloop.core.prompt_blocks import TokenBudget, check_piece, used_rows
from prefloop.core.prompt_files import Fields, Piece, plan_pieces, plan_sources
from prefloop.core.prompt_index import PromptIndex
from prefloop.core.prompts import read_prompts


class WordTokenizer:
    """One token per word (a test double for the policy's tokenizer: the block logic is what is tested)."""

    eos_token, bos_token = "</s>", None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(range(len(text.split())))}


BUDGET = TokenBudget(WordTokenizer(), "tulu", 6)  # the tulu template adds 2 words: prompts of 5+ words go


def hostile(tmp_path, name="p.jsonl"):
    lines = [
        '{"prompt": "one two"}',
        '{"prompt": ',                                    # 2 malformed
        b'{"prompt": "caf\xe9"}',                         # 3 not UTF-8
        '{"prompt_id": "a", "prompt": "first a"}',
        '',                                               # 5 blank: not a record
        '{"prompt": "one two"}',                          # 6 duplicate of line 1 (derived id)
        '{"prompt": "far too many words for the budget"}',  # 7 over budget
        '{"prompt_id": "a", "prompt": "second a"}',       # 8 duplicate id
        '{"messages": [{"role": "user", "content": "chat"}]}',
        '{"prompt": "   "}',                              # 10 empty
        '{"prompt_id": "b", "prompt": "bee"}',
        '{"prompt": "three four"}',
    ]
    path = tmp_path / name
    path.write_bytes(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + b"\n")
    return path


def index_of(path, block_rows, fields=Fields()):
    sources = plan_sources(path, fields)
    pieces = plan_pieces(sources, block_rows)
    index = PromptIndex(sources, pieces, fields)
    records = []
    for i, piece in reversed(list(enumerate(pieces))):  # the order they come back in does not matter
        summary = check_piece(sources[piece.source], piece, i, fields, BUDGET)
        records += index.add(json.loads(json.dumps(summary)))  # what crosses Ray is JSON
    return pieces, index, records


@pytest.mark.parametrize("block_rows", [1, 2, 3, 5, 100])
def test_blocks_decide_what_the_in_memory_reader_decides(tmp_path, block_rows):
    path = hostile(tmp_path)
    want = read_prompts(path, too_long=BUDGET.too_long)
    pieces, index, records = index_of(path, block_rows)
    got = index.decide()
    assert [p.rows for p in pieces] == [block_rows] * (12 // block_rows) + ([12 % block_rows] if 12 % block_rows else [])
    assert [p.first for p in pieces] == list(range(1, 13, block_rows))
    assert got.used_ids == [r.prompt_id for r in want.accepted]
    assert (got.read, got.accepted, got.rejected) == (want.read, len(want.accepted), len(want.rejected)) == (11, 5, 6)
    rejected = records + [d.to_dict() for d in got.duplicates]
    assert {r["location"]: r["field"] for r in rejected} == {r.location: r.field for r in want.rejected}
    dups = {d.location: d.reason for d in got.duplicates}
    assert dups == {"line 6": f"duplicate prompt_id {want.accepted[0].prompt_id!r} (same id or same content as "
                              f"{path}:line 1)",
                    "line 8": f"duplicate prompt_id 'a' (same id or same content as {path}:line 4)"}
    kept = {n: i for i, p in enumerate(pieces) for n in range(p.first, p.first + p.rows)}  # line -> its piece
    assert got.keep == {i: [n for n in (1, 4, 9, 11, 12) if kept[n] == i] for i in {kept[n] for n in (1, 4, 9, 11, 12)}}


def test_partition_and_limit_on_the_index_match_the_in_memory_path(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt_id": f"q{i}", "prompt": f"bees {i}"}) + "\n" for i in range(40)))
    _, index, _ = index_of(path, 7)
    got = index.decide(lambda rows: take(rows, 3, 1, seed=5, key=lambda r: r[2]), limit=4)
    mine = take(read_prompts(path).accepted, 3, 1, seed=5, key=lambda r: r.prompt_id)
    assert got.used_ids == [r.prompt_id for r in mine[:4]]
    assert got.in_partition == len(mine) and got.accepted == 40
    assert [n for numbers in got.keep.values() for n in numbers] == [int(pid[1:]) + 1 for pid in got.used_ids]


def test_used_rows_give_only_the_kept_rows_of_the_piece_tokenised(tmp_path):
    path = hostile(tmp_path)
    sources = plan_sources(path)
    first, second = plan_pieces(sources, 8)
    assert (first.first, first.rows, second.first, second.rows) == (1, 8, 9, 4)
    assert second.offset == sum(len(l) for l in path.read_bytes().split(b"\n")[:8]) + 8  # 8 lines and newlines
    rows = used_rows(sources[0], second, {1, 9, 11, 12}, Fields(), BUDGET)  # line 1 is not in this piece
    assert [r["prompt"] for r in rows] == ["chat", "bee", "three four"]
    assert json.loads(rows[0]["messages"]) == [{"role": "user", "content": "chat"}]
    assert rows[2]["prompt_token_ids"] == BUDGET.ids([{"role": "user", "content": "three four"}])
    with pytest.raises(RuntimeError, match=r"line 7: accepted on the first read, rejected on the second"):
        used_rows(sources[0], first, {1, 7}, Fields(), BUDGET)  # as if line 7 had changed in between


def test_every_source_answers_even_an_empty_one(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    sources = plan_sources(empty)
    assert plan_pieces(sources, 10) == [Piece(0, 1, 0, 0)]
    assert check_piece(sources[0], Piece(0, 1, 0, 0), 4, Fields(), BUDGET) == {"piece": 4, "accepted": [],
                                                                              "rejected": []}
    index = PromptIndex(sources, [Piece(0, 1, 0, 0), Piece(0, 1, 0, 0)])
    index.add({"piece": 1, "accepted": [], "rejected": []})
    with pytest.raises(RuntimeError, match="piece 1 of the prompt files was read twice"):
        index.add({"piece": 1, "accepted": [], "rejected": []})
    with pytest.raises(RuntimeError, match=r"1 pieces of the prompt files were never read \(first: \[0\]\)"):
        index.decide()

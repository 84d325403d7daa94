"""The streaming rollout's pure parts: files read block by block, the driver's index and the exactly-once check.

The block-wise path (``check_blocks`` per file + ``PromptIndex.decide``) must decide exactly what the in-memory
``read_prompts`` decides on the same hostile file, whatever the block size."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefloop.core import prompt_files
from prefloop.core.partition import take
from prefloop.core.prompt_blocks import TokenBudget, check_blocks, used_blocks
from prefloop.core.prompt_files import Fields, Source, iter_rows, plan_sources
from prefloop.core.prompt_index import ExactlyOnce, PromptIndex
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
    index = PromptIndex(sources, fields)
    records, sizes = [], []
    for i, source in enumerate(sources):
        for summary in check_blocks(source, i, fields, BUDGET, block_rows):
            sizes.append(len(summary["accepted"]) + len(summary["rejected"]))
            records += index.add(json.loads(json.dumps(summary)))  # what crosses Ray is JSON
    index.sizes = sizes
    return sources, index, records


@pytest.mark.parametrize("block_rows", [1, 2, 3, 5, 100])
def test_blocks_decide_what_the_in_memory_reader_decides(tmp_path, block_rows):
    path = hostile(tmp_path)
    want = read_prompts(path, too_long=BUDGET.too_long)
    sources, index, records = index_of(path, block_rows)
    got = index.decide()
    assert index.sizes == [block_rows] * (11 // block_rows) + ([11 % block_rows] if 11 % block_rows else [])
    assert got.used_ids == [r.prompt_id for r in want.accepted]
    assert (got.read, got.accepted, got.rejected) == (want.read, len(want.accepted), len(want.rejected)) == (11, 5, 6)
    rejected = records + [d.to_dict() for d in got.duplicates]
    assert {r["location"]: r["field"] for r in rejected} == {r.location: r.field for r in want.rejected}
    dups = {d.location: d.reason for d in got.duplicates}
    assert dups == {"line 6": f"duplicate prompt_id {want.accepted[0].prompt_id!r} (same id or same content as "
                              f"{path}:line 1)",
                    "line 8": f"duplicate prompt_id 'a' (same id or same content as {path}:line 4)"}
    assert got.keep == {0: [1, 4, 9, 11, 12]}


def test_partition_and_limit_on_the_index_match_the_in_memory_path(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt_id": f"q{i}", "prompt": f"bees {i}"}) + "\n" for i in range(40)))
    _, index, _ = index_of(path, 7)
    got = index.decide(lambda rows: take(rows, 3, 1, seed=5, key=lambda r: r[2]), limit=4)
    mine = take(read_prompts(path).accepted, 3, 1, seed=5, key=lambda r: r.prompt_id)
    assert got.used_ids == [r.prompt_id for r in mine[:4]]
    assert got.in_partition == len(mine) and got.accepted == 40
    assert got.keep == {0: [int(pid[1:]) + 1 for pid in got.used_ids]}  # line = index + 1


def test_used_blocks_give_only_the_kept_rows_tokenised(tmp_path):
    path = hostile(tmp_path)
    source = plan_sources(path)[0]
    blocks = list(used_blocks(source, {1, 9, 11, 12}, Fields(), BUDGET, 3))
    assert [len(b) for b in blocks] == [3, 1]
    rows = [r for b in blocks for r in b]
    assert [r["prompt"] for r in rows] == ["one two", "chat", "bee", "three four"]
    assert json.loads(rows[1]["messages"]) == [{"role": "user", "content": "chat"}]
    assert rows[0]["prompt_token_ids"] == BUDGET.ids([{"role": "user", "content": "one two"}])
    with pytest.raises(RuntimeError, match=r"line 7: accepted on the first read, rejected on the second"):
        list(used_blocks(source, {1, 7}, Fields(), BUDGET, 3))  # as if line 7 had changed in between


def test_every_source_answers_even_an_empty_one(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert list(check_blocks(Source(str(empty), "jsonl"), 4, Fields(), BUDGET, 10)) == [
        {"source": 4, "accepted": [], "rejected": []}]


def test_tables_are_read_in_batches_and_kept_rows_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(prompt_files, "TABLE_BATCH_ROWS", 4)
    table = pa.table({"prompt": [f"p{i}" for i in range(10)], "prompt_id": [f"id{i}" for i in range(10)]})
    parquet = tmp_path / "p.parquet"
    pq.write_table(table, parquet, row_group_size=3)
    arrow = tmp_path / "ds" / "data-00000-of-00001.arrow"
    arrow.parent.mkdir()
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=3):
            writer.write_batch(batch)
    for source in plan_sources(parquet) + plan_sources(arrow.parent):
        assert [(n, r["prompt"]) for n, r, _ in iter_rows(source)] == [(i, f"p{i}") for i in range(10)]
        assert [(n, r["prompt_id"]) for n, r, _ in iter_rows(source, {0, 5, 9})] == [(0, "id0"), (5, "id5"),
                                                                                    (9, "id9")]
    assert plan_sources(arrow.parent)[0].location(5) == "row 5"


def test_jsonl_kept_lines_skip_the_others_unparsed(tmp_path):
    path = hostile(tmp_path)
    got = [(n, r) for n, r, _ in iter_rows(Source(str(path), "jsonl"), {2, 4})]
    assert got[0][0] == 2 and isinstance(got[0][1], ValueError) and "malformed" in str(got[0][1])
    assert got[1] == (4, {"prompt_id": "a", "prompt": "first a"})


def test_a_block_naming_an_unknown_source_is_refused(tmp_path):
    index = PromptIndex([Source("a.jsonl", "jsonl")])
    with pytest.raises(ValueError, match="names source 3"):
        index.add({"source": 3, "accepted": [], "rejected": []})


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

"""Prompt files as the streaming rollout reads them (core/prompt_files.py): which files a path means, the pieces
they are cut into, and their rows read back by number, without parsing the rows that are not kept."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefloop.core import prompt_files
from prefloop.core.prompt_files import Fields, InputError, Piece, Source, iter_rows, plan_pieces, plan_sources


def test_tables_are_read_in_pieces_and_batches_and_kept_rows_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(prompt_files, "TABLE_BATCH_ROWS", 4)
    table = pa.table({"prompt": [f"p{i}" for i in range(10)], "prompt_id": [f"id{i}" for i in range(10)]})
    parquet = tmp_path / "p.parquet"
    pq.write_table(table, parquet, row_group_size=3)
    arrow = tmp_path / "ds" / "data-00000-of-00001.arrow"
    arrow.parent.mkdir()
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=3):
            writer.write_batch(batch)
    for sources in (plan_sources(parquet), plan_sources(arrow.parent)):
        source = sources[0]
        assert [(n, r["prompt"]) for n, r, _ in iter_rows(source)] == [(i, f"p{i}") for i in range(10)]
        assert [(n, r["prompt_id"]) for n, r, _ in iter_rows(source, {0, 5, 9})] == [(0, "id0"), (5, "id5"),
                                                                                    (9, "id9")]
        pieces = plan_pieces(sources, 4)
        assert [(p.first, p.rows) for p in pieces] == [(0, 4), (4, 4), (8, 2)]
        assert [n for p in pieces for n, _, _ in iter_rows(source, piece=p)] == list(range(10))
        assert [n for n, _, _ in iter_rows(source, {2, 5, 7, 9}, pieces[1])] == [5, 7]  # rows 4-7 only
    assert plan_sources(arrow.parent)[0].location(5) == "row 5"


def test_jsonl_kept_lines_skip_the_others_unparsed(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "one two"}\n{"prompt": \n{"prompt": "caf\n{"prompt_id": "a", "prompt": "first a"}\n')
    got = [(n, r) for n, r, _ in iter_rows(Source(str(path), "jsonl"), {2, 4})]  # line 3 is broken too, unread
    assert got[0][0] == 2 and isinstance(got[0][1], ValueError) and "malformed" in str(got[0][1])
    assert got[1] == (4, {"prompt_id": "a", "prompt": "first a"})


def test_jsonl_pieces_start_at_their_lines_byte_offsets(tmp_path):
    lines = [json.dumps({"prompt": "é" * i}) for i in range(1, 8)]  # multi-byte characters: offsets are bytes
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pieces = plan_pieces(plan_sources(path), 3)
    assert [(p.first, p.rows) for p in pieces] == [(1, 3), (4, 3), (7, 1)]
    raw = path.read_bytes()
    for p in pieces:
        assert raw[p.offset:].split(b"\n", 1)[0].decode() == lines[p.first - 1]
    assert [r["prompt"] for p in pieces for _, r, _ in iter_rows(Source(str(path), "jsonl"), piece=p)] == \
        ["é" * i for i in range(1, 8)]
    with pytest.raises(ValueError, match="rows per piece must be >= 1, got 0"):
        plan_pieces(plan_sources(path), 0)


def test_undecodable_and_blank_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n\n   \n{"prompt": "caf\xe9"}\n')
    got = list(iter_rows(Source(str(path), "jsonl")))
    assert [n for n, _, _ in got] == [1, 4]  # blank lines are not records
    assert isinstance(got[1][1], ValueError) and "not valid UTF-8" in str(got[1][1])


def test_a_dataset_folder_reads_its_data_files_in_order(tmp_path):
    folder = tmp_path / "ds"
    (folder / "b").mkdir(parents=True)
    (folder / "a.jsonl").write_text('{"prompt": "x"}\n')
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": "y"}]]}), folder / "b" / "c.parquet")
    assert plan_sources(folder) == [Source(str(folder / "a.jsonl"), "jsonl"),
                                    Source(str(folder / "b" / "c.parquet"), "parquet")]


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "none.jsonl", "prompt file not found"),
    (lambda d: (d / "p.csv").write_text("prompt\nx\n") and d / "p.csv", "unsupported prompt file type"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "a dataset directory with no .arrow, .parquet or .jsonl"),
    (lambda d: (d / "bad.parquet").write_text("not parquet") and d / "bad.parquet", "not a readable Parquet file"),
    (lambda d: pq.write_table(pa.table({"text": ["a"]}), d / "t.parquet") or d / "t.parquet",
     r"no 'prompt' or 'messages' column \(columns: text\)"),
], ids=["missing", "csv", "empty folder", "bad parquet", "no prompt column"])
def test_a_source_that_cannot_be_read_is_named(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError, match=message) as err:
        plan_sources(path)
    assert str(path) in str(err.value)


def test_the_columns_checked_are_the_recipes_fields(tmp_path):
    pq.write_table(pa.table({"question": ["a"]}), tmp_path / "q.parquet")
    assert plan_sources(tmp_path / "q.parquet", Fields(prompt="question")) == \
        [Source(str(tmp_path / "q.parquet"), "parquet")]
    assert plan_pieces(plan_sources(tmp_path / "q.parquet", Fields(prompt="question")), 5) == [Piece(0, 0, 1)]

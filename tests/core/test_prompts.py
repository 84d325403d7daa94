"""Reading prompts from hostile files: every row is accepted or rejected with file, location and reason."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefloop.core.prompts import Fields, InputError, derive_prompt_id, read_prompts


def jsonl(tmp_path, lines, name="p.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + b"\n")
    return path


def reasons(result):
    return {(r.location, r.field): r.reason for r in result.rejected}


def test_hostile_jsonl(tmp_path):
    path = jsonl(tmp_path, [
        '{"prompt": "good one"}',
        '{"prompt": ',                                  # malformed
        b'{"prompt": "caf\xe9"}',                          # not UTF-8
        '{"text": "no prompt field"}',
        '{"prompt": "   "}',                              # empty
        '{"prompt": 5}',
        '["not", "an", "object"]',
        '',                                               # blank lines are not records
        '{"prompt": "good one"}',                         # duplicate content -> same derived id
        '{"prompt_id": "a1", "prompt": "given id"}',
        '{"prompt_id": "a1", "prompt": "same id again"}',
        '{"messages": [{"role": "user", "content": "chat"}]}',
        '{"messages": [{"role": "assistant", "content": "x"}]}',
    ])
    result = read_prompts(path)
    assert [r.prompt for r in result.accepted] == ["good one", "given id", "chat"]
    got = reasons(result)
    assert got[("line 2", "(line)")].startswith("malformed JSON")
    assert "not valid UTF-8" in got[("line 3", "(line)")]
    assert "missing" in got[("line 4", "prompt")]
    assert got[("line 5", "prompt")] == "empty prompt"
    assert "must be a string" in got[("line 6", "prompt")]
    assert "JSON object" in got[("line 7", "(line)")]
    assert "duplicate" in got[("line 9", "prompt_id")]
    assert "duplicate" in got[("line 11", "prompt_id")]
    assert "last message" in got[("line 13", "messages")]
    assert result.read == len(result.accepted) + len(result.rejected) == 12
    assert all(r.file == str(path) for r in result.rejected)


def test_prompt_ids_are_stable(tmp_path):
    msgs = [{"role": "user", "content": "same"}]
    first = read_prompts(jsonl(tmp_path, ['{"prompt": "same"}'], "a.jsonl")).accepted[0]
    second = read_prompts(jsonl(tmp_path, ['{"prompt": "same"}'], "b.jsonl")).accepted[0]
    assert first.prompt_id == second.prompt_id == derive_prompt_id(msgs)
    assert first.source.endswith("a.jsonl:line 1")


def test_token_budget_rejects_with_reason(tmp_path):
    path = jsonl(tmp_path, ['{"prompt": "short"}', '{"prompt": "a much longer prompt here"}'])
    result = read_prompts(path, too_long=lambda m: "too long" if len(m[0]["content"]) > 10 else None)
    assert [r.prompt for r in result.accepted] == ["short"]
    assert reasons(result) == {("line 2", "prompt"): "too long"}


def test_parquet_and_custom_fields(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": ["x", "y"], "instruction": ["one", ""]}), path)
    result = read_prompts(path, Fields(prompt="instruction", id="id"))
    assert [r.prompt_id for r in result.accepted] == ["x"]
    assert reasons(result) == {("row 1", "instruction"): "empty prompt"}


def test_parquet_without_prompt_column_names_the_columns(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"question": ["q"]}), path)
    with pytest.raises(InputError, match=r"no 'prompt' or 'messages' column \(columns: question\)"):
        read_prompts(path)


def test_hf_dataset_directory(tmp_path):
    # datasets.save_to_disk writes Arrow IPC *stream* files plus JSON metadata.
    folder = tmp_path / "ds"
    folder.mkdir()
    table = pa.table({"prompt": ["a", "b"]})
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    assert [r.prompt for r in read_prompts(folder).accepted] == ["a", "b"]


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_prompts(tmp_path / "nope.jsonl")
    bad = tmp_path / "p.csv"
    bad.write_text("prompt\nx\n")
    with pytest.raises(InputError, match="unsupported"):
        read_prompts(bad)

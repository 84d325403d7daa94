"""Training rows: validation with reasons, method shaping, control tokens, KTO's mismatched pairs."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefloop.core.train_data import (
    BAD,
    GOOD,
    TrainDataError,
    add_kl_completions,
    add_prompt_text,
    check_row,
    detect_kind,
    generation_prompt,
    kl_partners,
    read_train_rows,
    shuffled,
    to_examples,
)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_detect_kind_from_columns():
    assert detect_kind(["prompt", "chosen", "rejected"], "f") == "prefs"
    assert detect_kind(["prompt", "completion", "label"], "f") == "kto"
    assert detect_kind(["messages", "completion"], "f") == "sft"
    with pytest.raises(TrainDataError, match="cannot tell the data kind"):
        detect_kind(["prompt", "answer"], "f")


def test_bad_preference_rows_are_rejected_with_row_field_and_reason(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "hi", "chosen": "good answer", "rejected": "bad answer"},
        {"prompt": "hi", "chosen": "", "rejected": "bad"},
        {"prompt": "hi", "chosen": "same", "rejected": "same "},
        {"prompt": "", "chosen": "a", "rejected": "b"},
        {"prompt": "hi", "chosen": 3, "rejected": "b"},
        '{"prompt": "broken',
        {"messages": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "x"}],
         "rejected": "y"},
    ])
    rows = read_train_rows(path)
    assert rows.kind == "prefs" and len(rows.accepted) == 2 and len(rows.rejected) == 5
    by_line = {r.location: (r.field, r.reason) for r in rows.rejected}
    assert by_line["line 2"] == ("chosen", "empty")
    assert by_line["line 3"][0] == "rejected" and "identical" in by_line["line 3"][1]
    assert by_line["line 4"] == ("prompt", "empty")
    assert by_line["line 5"][0] == "chosen" and "string" in by_line["line 5"][1]
    assert "malformed JSON" in by_line["line 6"][1]
    assert rows.accepted[1]["chosen"] == "x"  # TRL's conversational format
    assert all(r.file == str(path) for r in rows.rejected)


def test_kto_labels_must_be_booleans(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": "a", "completion": "x", "label": True},
        {"prompt": "a", "completion": "x", "label": 1},
        {"prompt": "a", "completion": "x", "label": "true"},
        {"prompt": "a", "completion": "x", "label": None},
    ])
    rows = read_train_rows(path)
    assert len(rows.accepted) == 1
    assert [r.field for r in rows.rejected] == ["label"] * 3


def test_empty_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(TrainDataError, match="not found"):
        read_train_rows(tmp_path / "nope.parquet")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({}), empty)
    with pytest.raises(TrainDataError, match="no rows"):
        read_train_rows(empty)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(TrainDataError, match="no rows"):
        read_train_rows(tmp_path / "blank.jsonl")


def test_parquet_with_messages_and_ids(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt_id": "p1", "prompt": "hi", "chosen": "a", "rejected": "b",
                                          "messages": [{"role": "user", "content": "hello there"}]}]), path)
    rows = read_train_rows(path)
    assert rows.accepted[0]["prompt_id"] == "p1"
    assert rows.accepted[0]["messages"] == [{"role": "user", "content": "hello there"}]


def test_method_shapes():
    prefs = [check_row({"prompt": "q", "chosen": "c", "rejected": "r"}, "prefs")]
    assert to_examples(prefs, "prefs", "dpo")[0]["chosen"] == "c"
    assert [(e["completion"], e["label"]) for e in to_examples(prefs, "prefs", "kto")] == [("c", True), ("r", False)]
    assert [e["completion"] for e in to_examples(prefs, "prefs", "sft")] == ["c"]
    kto = [check_row({"prompt": "q", "completion": c, "label": lab}, "kto") for c, lab in (("c", True), ("r", False))]
    assert [e["completion"] for e in to_examples(kto, "kto", "sft")] == ["c"]  # desirable only
    with pytest.raises(TrainDataError, match="cannot train on kto"):
        to_examples(kto, "kto", "dpo")
    sft = [check_row({"prompt": "q", "completion": "c"}, "sft")]
    with pytest.raises(TrainDataError, match="csft"):
        to_examples(sft, "sft", "csft")


def test_csft_control_token_ends_the_prompt():
    rows = [check_row({"prompt": "q", "completion": c, "label": lab}, "kto") for c, lab in (("c", True), ("r", False))]
    examples = to_examples(rows, "kto", "csft")
    add_prompt_text(examples, "csft", lambda m: f"<|user|>\n{m[-1]['content']}\n<|assistant|>\n")
    assert examples[0]["prompt_text"].endswith("<|assistant|>\n" + GOOD)
    assert examples[1]["prompt_text"].endswith(BAD)
    assert examples[0]["completion"] == "c"  # the token is given, not part of the trained response
    assert generation_prompt("P") == "P" + GOOD


def test_kl_partners_never_pair_a_prompt_with_itself():
    ids = [f"p{i // 2}" for i in range(20)]  # desirable and undesirable of a prompt side by side, as the rollout
    partners = kl_partners(ids, seed=3)
    assert all(ids[i] != ids[j] for i, j in enumerate(partners))
    assert kl_partners(ids, seed=3) == partners
    with pytest.raises(TrainDataError, match="2 different prompts"):
        kl_partners(["p", "p"], seed=0)
    examples = [{"prompt_id": p, "completion": f"c{i}"} for i, p in enumerate(ids)]
    add_kl_completions(examples, seed=0)
    assert all(e["kl_completion"] != e["completion"] for e in examples)


def test_shuffle_is_seeded_and_keeps_rows():
    rows = [{"i": i} for i in range(30)]
    a, b = shuffled(rows, 1), shuffled(rows, 1)
    assert a == b and sorted(r["i"] for r in a) == list(range(30)) and a != rows


def test_worker_order_is_fixed_by_the_seed_and_deals_equal_disjoint_shares():
    from prefloop.core.train_data import worker_order

    ids = list(range(10))
    shares = [worker_order(ids, 7, 0, r, 3) for r in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]  # 10 // 3 each, the remainder left out (as plan_steps counts)
    assert len(set(sum(shares, []))) == 9
    assert shares == [worker_order(list(reversed(ids)), 7, 0, r, 3) for r in range(3)]  # input order is irrelevant
    assert worker_order(ids, 7, 1, 0, 3) != shares[0] or worker_order(ids, 7, 1, 1, 3) != shares[1]  # per epoch
    assert worker_order(ids, 8, 0, 0, 1) != worker_order(ids, 7, 0, 0, 1)
    assert sorted(worker_order(ids, 7, 0, 0, 1)) == ids

"""``prefloop data prepare``: every kind round-trips a local copy of its dataset (real schema, real split
names, hostile rows) into partitions that prefloop's own readers accept; counts add up; partitions are
disjoint, cover the kept rows and do not depend on the source's order."""

import json

import pyarrow.parquet as pq
import pytest

from prefloop.app.data.data_prepare import prepare
from prefloop.app.front.cli import main
from prefloop.core.prompts import InputError, read_prompts
from prefloop.core.train_data import read_train_rows
from tests import card_fixtures as fx


def table(path):
    return pq.read_table(path).to_pylist()


def rejected(out):
    return [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]


def check_counts(manifest, read, kept, rejected_n, not_selected=0):
    c = manifest["counts"]
    assert (c["read"], c["kept"], c["rejected"], c["not_selected"]) == (read, kept, rejected_n, not_selected)
    assert c["read"] == c["kept"] + c["rejected"] + c["not_selected"]


def test_ultrafeedback_binarized_prompts_in_three_disjoint_partitions(tmp_path):
    src = fx.ultrafeedback_binarized(tmp_path / "ufb")
    m = prepare("ultrafeedback-prompts", {"u": str(src)}, tmp_path / "out", partitions=3, seed=0)
    check_counts(m, 11, 6, 5)
    assert m["per_source"]["u"]["split"] == "train_prefs" and m["sources"]["u"]["kind"] == "sha256"
    parts = [table(tmp_path / "out" / f"prompts-{i}.parquet") for i in range(3)]
    ids = [r["prompt_id"] for p in parts for r in p]
    assert sorted(ids) == sorted(f"id{i}" for i in range(6)) and len(ids) == len(set(ids))
    row = next(r for p in parts for r in p if r["prompt_id"] == "id1")
    assert row["messages"] == [{"role": "user", "content": "Question number 1?"}]  # not the assistant-final one
    reasons = {(r["location"], r["field"], r["reason"].split(" of ")[0]) for r in rejected(tmp_path / "out")}
    assert reasons == {("row 6", "prompt", "empty"), ("row 7", "prompt", "empty"), ("row 8", "prompt", "missing"),
                       ("row 9", "prompt", "duplicate prompt"), ("row 10", "prompt", "duplicate prompt")}
    for i in range(3):  # the rollout's reader takes every prepared row
        got = read_prompts(tmp_path / "out" / f"prompts-{i}.parquet")
        assert not got.rejected and len(got.accepted) == len(parts[i])


def test_partitions_are_stable_for_a_seed_and_change_with_it(tmp_path):
    src = fx.ultrafeedback_binarized(tmp_path / "ufb")
    prepare("ultrafeedback-prompts", {"u": str(src)}, tmp_path / "a", partitions=3, seed=0)
    prepare("ultrafeedback-prompts", {"u": str(src)}, tmp_path / "b", partitions=3, seed=0)
    prepare("ultrafeedback-prompts", {"u": str(src)}, tmp_path / "c", partitions=3, seed=5)
    ids = {d: [[r["prompt_id"] for r in table(tmp_path / d / f"prompts-{i}.parquet")] for i in range(3)] for d in "abc"}
    assert ids["a"] == ids["b"] and ids["a"] != ids["c"]


def test_openbmb_ultrafeedback_wrong_type_and_malformed_line(tmp_path):
    src = fx.openbmb_ultrafeedback(tmp_path / "ob")
    m = prepare("ultrafeedback-prompts", {"u": str(src)}, tmp_path / "out")
    check_counts(m, 6, 4, 2)
    fields = sorted((r["location"], r["field"]) for r in rejected(tmp_path / "out"))
    assert fields == [("line 5", "instruction"), ("line 6", "(line)")]
    assert [r["prompt"] for r in table(tmp_path / "out" / "prompts-0.parquet")] == [f"Instruction {i}" for i in range(4)]


def test_snorkel_iterations_become_the_partitions(tmp_path):
    src = fx.snorkel(tmp_path / "snorkel")
    out = tmp_path / "out"
    m = prepare("snorkel-pairs", {"s": str(src)}, out)
    check_counts(m, 16, 12, 4)
    assert m["partitions"] == 3 and m["per_source"]["s"]["splits"] == [f"train_iteration_{i}" for i in (1, 2, 3)]
    for i in range(3):
        prefs = read_train_rows(out / f"prefs-{i}.parquet")
        assert prefs.kind == "prefs" and not prefs.rejected and len(prefs.accepted) == 4
        assert {r["prompt_id"] for r in prefs.accepted} == {f"it{i + 1}-{k}" for k in range(4)}
        kto = read_train_rows(out / f"kto-{i}.parquet")
        assert kto.kind == "kto" and sorted(r["label"] for r in kto.accepted) == [False] * 4 + [True] * 4
        assert len(read_prompts(out / f"prompts-{i}.parquet").accepted) == 4
    pair = table(out / "prefs-0.parquet")[0]
    assert pair["chosen"] == "a0 for Iteration 1 prompt 0" and pair["rejected"] == "a4 for Iteration 1 prompt 0"
    got = {(r["location"], r["field"]) for r in rejected(out)}
    assert got == {("row 4", "chosen"), ("row 5", "rejected"), ("row 6", "rejected"), ("row 4", "prompt")}


def test_snorkel_one_split_repartitioned(tmp_path):
    src = fx.snorkel(tmp_path / "snorkel", per_iteration=9)
    m = prepare("snorkel-pairs", {"s": str(src)}, tmp_path / "out", partitions=2, split_name="train_iteration_3")
    check_counts(m, 9, 9, 0)
    sizes = [len(table(tmp_path / "out" / f"prefs-{i}.parquet")) for i in range(2)]
    assert sum(sizes) == 9 and m["partitioned_by"].startswith("sha256")


def test_archangel_mix_hh_shp_oasst(tmp_path):
    srcs = {"hh": str(fx.hh(tmp_path / "hh")), "shp": str(fx.shp(tmp_path / "shp")),
            "oasst": str(fx.oasst(tmp_path / "oasst"))}
    out = tmp_path / "out"
    m = prepare("archangel-mix", srcs, out, partitions=2, seed=1)
    check_counts(m, 9 + 12 + 12, 4 + 6 + 7, 5 + 6 + 5)
    pairs = [r for i in range(2) for r in table(out / f"prefs-{i}.parquet")]
    assert sorted(r["dataset"] for r in pairs) == ["hh"] * 4 + ["oasst"] * 3 + ["shp"] * 6
    where = {}
    for i in range(2):  # a prompt's pairs (SHP's post p1 has 5) stay in one partition
        for r in table(out / f"prefs-{i}.parquet"):
            assert where.setdefault(r["prompt_id"], i) == i
    multi = next(r for r in pairs if r["dataset"] == "hh" and len(r["messages"]) == 3)
    assert [x["role"] for x in multi["messages"]] == ["user", "assistant", "user"] and multi["chosen"] == "A pun."
    shp_p2 = next(r for r in pairs if r.get("post_id") == "p2")
    assert shp_p2["chosen"] == "answer B0 of p2"  # labels 0: B preferred
    follow = next(r for r in pairs if r["dataset"] == "oasst" and r["chosen"] == "7.")
    assert follow["rejected"] == "9." and follow["messages"][-1]["content"] == "Give an example."
    reasons = {r["reason"][:30] for r in rejected(out)}
    assert any("over 5 pairs" in r["reason"] for r in rejected(out)) and "lang: 'de'"[6:] in " ".join(reasons)
    for i in range(2):
        assert not read_train_rows(out / f"prefs-{i}.parquet").rejected
        kto = read_train_rows(out / f"kto-{i}.parquet")
        assert kto.kind == "kto" and not kto.rejected


def test_lmsys_first_turn_english_unflagged_with_a_stable_limit(tmp_path):
    src = fx.lmsys(tmp_path / "lmsys")
    out = tmp_path / "out"
    m = prepare("lmsys-first-turn", {"l": str(src)}, out, limit=5)
    check_counts(m, 13, 5, 5, 3)
    rows = table(out / "prompts-0.parquet")
    assert len(rows) == 5 and all(len(r["messages"]) == 1 and r["prompt"].startswith("First question") for r in rows)
    again = prepare("lmsys-first-turn", {"l": str(src)}, tmp_path / "again", limit=5)
    assert again["counts"] == m["counts"] and table(tmp_path / "again" / "prompts-0.parquet") == rows
    fields = sorted(r["field"] for r in rejected(out))
    assert fields == ["content", "conversation", "language", "openai_moderation", "prompt"]


def test_alpaca_eval_heldout(tmp_path):
    m = prepare("alpaca-eval", {"a": str(fx.alpaca_eval(tmp_path / "ae"))}, tmp_path / "out")
    check_counts(m, 7, 5, 2)
    rows = table(tmp_path / "out" / "prompts-0.parquet")
    assert [r["prompt"] for r in rows] == [f"Instruction {i}" for i in range(5)] and rows[0]["dataset"] == "helpful_base"


def test_cli_and_clear_errors(tmp_path, capsys):
    src = fx.alpaca_eval(tmp_path / "ae")
    assert main(["data", "prepare", "alpaca-eval", "--source", str(src), "--out", str(tmp_path / "o")]) == 0
    assert "kept 5" in capsys.readouterr().out
    assert main(["data", "prepare", "alpaca-eval", "--source", str(tmp_path / "nope.parquet"), "--out", "x"]) == 2
    assert "nope.parquet: no such file" in capsys.readouterr().err
    with pytest.raises(InputError, match="no split 'test'"):
        prepare("alpaca-eval", {"a": str(src)}, tmp_path / "o2", split_name="test")
    assert main(["data", "prepare", "archangel-mix", "--source", "x", "--out", str(tmp_path / "o3")]) == 2
    assert "archangel-mix takes hh=SRC" in capsys.readouterr().err and not (tmp_path / "o3").exists()


def test_alpaca_eval_json_array_as_distributed(tmp_path):
    items = [{"instruction": f"Do {i}", "output": "o", "generator": "g", "dataset": "vicuna"} for i in range(3)]
    (tmp_path / "alpaca_eval.json").write_text(json.dumps(items + [{"instruction": None}], indent=1))
    m = prepare("alpaca-eval", {"a": str(tmp_path / "alpaca_eval.json")}, tmp_path / "out")
    check_counts(m, 4, 3, 1)
    assert rejected(tmp_path / "out")[0]["location"] == "item 3"

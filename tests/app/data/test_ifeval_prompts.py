"""``prefloop data prepare ifeval-synth | ifeval`` (app/data/ifeval_prompts.py): seeded prompts from IFEval's
registry with held-out topics apart, and the real google/IFEval schema read from a local file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefloop.app.front.cli import main
from prefloop.core import ifeval
from prefloop.tinyworld.topics import DATA_DIR


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_synth_is_seeded_and_keeps_heldout_topics_apart(tmp_path, capsys):
    args = ["data", "prepare", "ifeval-synth", "--partitions", "2", "--limit", "20", "--heldout", "15"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "left out length_constraints:number_sentences: its checker needs nltk data 'punkt'" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    for name in ("train-0.jsonl", "train-1.jsonl", "heldout.jsonl", "instructions.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    train = _rows(tmp_path / "a" / "train-0.jsonl") + _rows(tmp_path / "a" / "train-1.jsonl")
    held = _rows(tmp_path / "a" / "heldout.jsonl")
    assert (len(train), len(held)) == (40, 15)
    assert not {r["topic"] for r in train} & {r["topic"] for r in held}
    assert len({r["prompt_id"] for r in train + held}) == 55
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert set(manifest["instruction_ids_left_out"]) == {"change_case:capital_word_frequency",
                                                         "length_constraints:number_sentences"}
    assert 1 <= min(len(r["instruction_id_list"]) for r in train) and max(len(r["instruction_id_list"])
                                                                           for r in train) <= 3
    # the stored arguments rebuild the very instruction text the prompt carries, by IFEval's own classes
    registry = ifeval.registry()
    for r in train[:10]:
        for iid, kw in zip(r["instruction_id_list"], r["kwargs"]):
            assert registry[iid](iid).build_description(**kw).strip() in r["prompt"]
    assert main([*args, "--seed", "1", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "heldout.jsonl").read_text() != (tmp_path / "a" / "heldout.jsonl").read_text()


def test_shipped_prompts_are_what_prepare_makes(tmp_path):
    """{data}/ifeval_synth (the recipe's prompts) is the output of the documented command."""
    assert main(["data", "prepare", "ifeval-synth", "--partitions", "3", "--limit", "64", "--heldout", "100",
                 "--seed", "0", "--out", str(tmp_path)]) == 0
    for name in ("train-0.jsonl", "train-2.jsonl", "heldout.jsonl", "instructions.jsonl"):
        assert (tmp_path / name).read_text() == (DATA_DIR / "ifeval_synth" / name).read_text()


IFEVAL_ROWS = [  # the google/IFEval schema: every kwargs object has every argument, unused ones null
    {"key": 1000, "prompt": "Write a 300+ word summary of the wikipedia page. Do not use any commas.",
     "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
     "kwargs": [{"num_words": None, "relation": None}, {"num_words": 300, "relation": "at least"}]},
    {"key": 1001, "prompt": "I am planning a trip. Answer in at least 3 sentences.",
     "instruction_id_list": ["length_constraints:number_sentences"],
     "kwargs": [{"num_sentences": 3, "relation": "at least"}]},
    {"key": 1002, "prompt": "", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
]


def test_real_ifeval_schema_with_rows_that_cannot_be_graded_rejected(tmp_path):
    src = tmp_path / "ifeval_input_data.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in IFEVAL_ROWS) + "{broken\n")
    assert main(["data", "prepare", "ifeval", "--source", str(src), "--out", str(tmp_path / "out")]) == 0
    kept = _rows(tmp_path / "out" / "ifeval.jsonl")
    assert [r["prompt_id"] for r in kept] == ["ifeval-1000"]
    assert kept[0]["kwargs"] == [{}, {"num_words": 300, "relation": "at least"}]
    rejected = _rows(tmp_path / "out" / "rejected.jsonl")
    assert [(r["location"], r["field"]) for r in rejected] == [("line 2", "instruction_id_list"), ("line 3", "prompt"),
                                                                ("line 4", "")]
    assert "punkt" in rejected[0]["reason"] and "not JSON" in rejected[2]["reason"]
    table = ifeval.read_instructions(tmp_path / "out" / "instructions.jsonl", ifeval.runnable_ids())
    grade = ifeval.grade(kept[0]["prompt"], "word " * 310, table["ifeval-1000"])
    assert grade.strict == (True, True)


def test_ifeval_kind_needs_its_file(tmp_path, capsys):
    assert main(["data", "prepare", "ifeval", "--source", str(tmp_path / "none.jsonl"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "none.jsonl: file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "prepare", "ifeval-synth", "--source", "x", "--out", str(tmp_path / "o"), "--bogus"])


def test_a_key_twice_is_refused_before_anything_is_written(tmp_path, capsys):
    src = tmp_path / "dup.jsonl"
    src.write_text(json.dumps(IFEVAL_ROWS[0]) + "\n" + json.dumps(IFEVAL_ROWS[0]) + "\n")
    assert main(["data", "prepare", "ifeval", "--source", str(src), "--out", str(tmp_path / "o")]) == 2
    assert "prompt_id 'ifeval-1000' appears twice" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

"""``prefloop data prepare``'s outputs cannot go stale, and it is honest about keeping nothing: a non-empty --out
is refused without --force, which replaces it whole; the manifest lists every file; 0 rows kept exits 1."""

import json
import os

import pytest

from prefloop.app.data import data_prepare
from prefloop.app.front.cli import main
from tests import card_fixtures as fx


def prepare_cli(*args):
    return main(["data", "prepare", *map(str, args)])


def test_a_second_prepare_leaves_no_stale_partition(tmp_path, capsys):
    src, out = fx.ultrafeedback_binarized(tmp_path / "ufb"), tmp_path / "out"
    assert prepare_cli("ultrafeedback-prompts", "--source", src, "--out", out, "--partitions", "3") == 0
    assert (out / "prompts-2.parquet").is_file()
    capsys.readouterr()
    assert prepare_cli("ultrafeedback-prompts", "--source", src, "--out", out) == 2  # refused: out is not empty
    assert "add --force" in capsys.readouterr().err and (out / "prompts-2.parquet").is_file()
    assert prepare_cli("ultrafeedback-prompts", "--source", src, "--out", out, "--force") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(os.listdir(out)) == manifest["contents"] == ["manifest.json", "prompts-0.parquet", "rejected.jsonl"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folder left


def test_a_failed_prepare_keeps_the_old_folder_whole(tmp_path, monkeypatch, capsys):
    src, out = fx.ultrafeedback_binarized(tmp_path / "ufb"), tmp_path / "out"
    assert prepare_cli("ultrafeedback-prompts", "--source", src, "--out", out, "--partitions", "2") == 0
    before = sorted(os.listdir(out))

    def disk_full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data_prepare, "write_table", disk_full)
    with pytest.raises(OSError):
        data_prepare.prepare("ultrafeedback-prompts", {"u": str(src)}, out, partitions=3, force=True)
    assert sorted(os.listdir(out)) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out", "ufb"]


def test_nothing_kept_exits_1_with_the_reasons(tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"instruction": ""}\n{"instruction": ""}\n{not json\n')
    assert prepare_cli("alpaca-eval", "--source", src, "--out", tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "kept no row of 3 read" in err and "2 x instruction: empty" in err and str(tmp_path / "o" / "rejected.jsonl") in err


def test_rejected_raw_is_the_line_and_counts_agree(tmp_path):
    src = fx.openbmb_ultrafeedback(tmp_path / "ob")
    m = data_prepare.prepare("ultrafeedback-prompts", {"u": str(src)}, tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    malformed = next(r for r in rows if r["field"] == "(line)")
    lines = [line for line in next(src.rglob("*.jsonl")).read_text().splitlines() if line.strip()]
    assert malformed["raw"] in lines  # the line as read, not the parse error
    assert sum(s["kept"] for s in m["per_source"].values()) == m["counts"]["kept"]
    ufb = fx.ultrafeedback_binarized(tmp_path / "ufb")  # duplicates: counted once, in both places
    m = data_prepare.prepare("ultrafeedback-prompts", {"u": str(ufb)}, tmp_path / "out2", limit=4)
    assert m["per_source"]["u"]["kept"] == m["counts"]["kept"] == 4


def test_reasons_are_whole():
    long = "x" * 100
    r = type("R", (), {"field": "prompt", "reason": f"too long: {long}"})()
    assert data_prepare.reason_key(r) == f"prompt: too long: {long}"
    dup = type("R", (), {"field": "prompt", "reason": "duplicate prompt of f:row 1"})()
    assert data_prepare.reason_key(dup) == "prompt: duplicate prompt"

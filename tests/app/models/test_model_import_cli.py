"""`prefloop model import` and the `{smollm2}` placeholder (app/models): what is imported, when, and the errors."""

from __future__ import annotations

from prefloop.app.front.cli import main
from prefloop.app.models.catalog import ensure_models, model_placeholders


def test_unknown_sources_are_user_errors(tmp_path, capsys):
    assert main(["model", "import", "no-such-pkg", "--out", str(tmp_path / "m")]) == 2
    assert "no-such-pkg: neither a .gguf file nor an installed package" in capsys.readouterr().err
    assert main(["model", "import", str(tmp_path / "x.gguf"), "--out", str(tmp_path / "m")]) == 2
    assert "x.gguf: GGUF file not found" in capsys.readouterr().err
    assert main(["model", "import", "some-pkg"]) == 2
    assert "give --out DIR (or a known model: smollm2)" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_only_a_recipe_naming_the_model_imports_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLOOP_ASSETS", str(tmp_path))
    path = model_placeholders()["smollm2"]
    assert path == str(tmp_path / "imported" / "smollm2")
    assert ensure_models({"policy": {"model": str(tmp_path / "imported" / "smollm2-other")}}) == []
    assert not (tmp_path / "imported").exists()


def test_recipe_check_expands_the_placeholder(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PREFLOOP_ASSETS", str(tmp_path))
    assert main(["recipe", "check", "recipes/smollm2-ifeval.yaml"]) == 0
    out = capsys.readouterr().out
    assert f"model: {tmp_path}/imported/smollm2" in out and "{smollm2}" not in out
    assert not (tmp_path / "imported").exists()  # checking a recipe imports nothing

"""The command line: a recipe typo is a one-line error naming the key, exit code 2, no traceback."""

from prefloop.app.cli import main


def test_recipe_check_prints_resolved(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nrun_dir: r\npolicy: {model: '{assets}/policy'}\ndata: {train: p.jsonl}\n"
                    "scorer: {kind: function, function: 'm:f'}\n")
    assert main(["recipe", "check", str(path), "--set", "rollout.num_samples=6"]) == 0
    out = capsys.readouterr().out
    assert "num_samples: 6" in out and "{assets}" not in out


def test_recipe_typo_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nrun_dir: r\npolicy: {model: m}\ndata: {train: p.jsonl}\n"
                    "scorer: {kind: pairrm, model: x}\nrolout: {num_samples: 4}\n")
    assert main(["recipe", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "rolout: unknown key" in err and str(path) in err and "Traceback" not in err


def test_shipped_demo_recipe_is_valid(capsys):
    assert main(["recipe", "check", "recipes/demo.yaml"]) == 0


def test_every_shipped_recipe_is_valid_with_and_without_tiny(capsys):
    from pathlib import Path

    recipes = sorted(Path("recipes").glob("*.yaml"))
    assert len(recipes) >= 4
    for recipe in recipes:
        assert main(["recipe", "check", str(recipe)]) == 0, recipe
        assert main(["recipe", "check", str(recipe), "--tiny"]) == 0, recipe
        out = capsys.readouterr().out
        assert "{assets}" not in out and "assets: tiny" in out, recipe

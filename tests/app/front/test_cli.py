"""The command line: a recipe typo is a one-line error naming the key, exit code 2, no traceback."""

from prefloop.app.front.cli import main


def test_recipe_check_prints_resolved(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nrun_dir: r\npolicy: {model: '{assets}/policy'}\ndata: {train: p.jsonl}\n"
                    "scorer: {kind: function, function: 'm:f'}\n")
    assert main(["recipe", "check", str(path), "--set", "rollout.num_samples=6", "--schema-only"]) == 0
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
    for recipe in recipes:  # the cluster recipes' files are on the cluster: their keys and values only
        assert main(["recipe", "check", str(recipe), "--schema-only"]) == 0, recipe
        assert main(["recipe", "check", str(recipe), "--tiny"]) == 0, recipe  # and the whole preflight
        out = capsys.readouterr().out
        assert "{assets}" not in out and "assets: tiny" in out, recipe


def test_a_resume_with_other_settings_or_a_held_run_is_refused_before_any_work(tmp_path, capsys):
    """`prefloop rollout` on a run started with other --set values: exit 2 with the diff; on a run another
    live driver holds: exit 2 naming it. Both before Ray or a model is touched (no actor, no engine is started)."""
    import json
    import os
    import socket

    from prefloop.app.storage.runlock import LOCK_NAME

    run = tmp_path / "run"
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nrun_dir: {run}\npolicy: {{model: '{{assets}}/policy'}}\n"  # passes the preflight
                    "data: {train: '{data}/prompts.jsonl'}\n"
                    "scorer: {kind: function, function: 'prefloop.tinyworld.gold:gold_score'}\n")
    assert main(["recipe", "check", str(path), "--set", "rollout.num_samples=4", "--schema-only"]) == 0
    run.mkdir()
    (run / "recipe.yaml").write_text(capsys.readouterr().out)
    assert main(["rollout", str(path), "--set", "rollout.num_samples=8"]) == 2
    err = capsys.readouterr().err
    assert "-  num_samples: 4" in err and "+  num_samples: 8" in err and "--allow-recipe-change" in err
    assert not (run / LOCK_NAME).exists()
    (run / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "started": 0,
                                             "expires": 4e9, "token": "t"}))  # a live process: our parent
    assert main(["rollout", str(path), "--set", "rollout.num_samples=4"]) == 2
    assert f"pid {os.getppid()} on {socket.gethostname()}" in capsys.readouterr().err

"""``prefloop status`` knows a run from a folder (exit 2, naming the run nearby) and a corrupt heartbeat from
a missing one (exit 1)."""

import os

from prefloop.app.front.cli import main
from tests.builders import report_run


def test_a_folder_of_runs_or_inside_one_is_not_a_run(tmp_path, capsys):
    run = tmp_path / "runs" / "demo"
    report_run(run, rounds=1, planned=3)
    assert main(["status", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "not a run directory" in err and f"did you mean {os.path.relpath(run)}?" in err
    assert main(["status", str(run / "round_0")]) == 2
    assert f"did you mean {os.path.relpath(run)}?" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert main(["status", str(tmp_path / "plain")]) == 2
    assert "a run directory holds recipe.yaml" in capsys.readouterr().err
    assert main(["status", str(run)]) == 0


def test_a_corrupt_heartbeat_is_reported_as_corrupt(tmp_path, capsys):
    run = tmp_path / "run"
    report_run(run, rounds=1, planned=3)
    (run / "heartbeat.json").write_text('{"state": "runn')
    assert main(["status", str(run)]) == 1
    assert "CORRUPT heartbeat" in capsys.readouterr().out

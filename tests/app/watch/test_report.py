"""The report from committed eval manifests: both judges side by side, the independence warning, the flag on a
round where the training judge's win rate rises while the eval judge's does not."""

from prefloop.app.storage.rundir import RunDir, write_manifest
from prefloop.app.watch.report import diverging_rounds, format_table, write_report
from prefloop.core.config import parse_recipe

RAW = {"name": "t", "run_dir": "x", "policy": {"model": "/p"}, "data": {"train": "/d"},
       "scorer": {"kind": "pairrm", "model": "/r"}, "loop": {"rounds": 3}}


def manifest(r, win, judge_win, independent=True, **extra):
    return {"round": r, "pairs": 10, "win_rate": win, "win_rate_stderr": 0.05, "scorer_win_rate": judge_win,
            "lc_win_rate": win - 0.1, "lc_unstable": r == 0, "lc_unstable_reason": "only 12 prompts (< 30)" if r == 0
            else None, "mean_length": 20.0 + r, "base_mean_length": 18.0, "repetition_rate": 0.1 * r,
            "base_repetition_rate": 0.0, "truncation_rate": 0.0, "base_truncation_rate": 0.25, "distinct_2": 0.5,
            "base_distinct_2": 0.6, "judge": "function" if independent else "pairrm",
            "judge_independent": independent, "swap_s": 0.01, "timings_s": {"round": 5}, **extra}


def commit(tmp_path, rows):
    run = RunDir(tmp_path / "run")
    for m in rows:
        with run.commit(m["round"], "eval") as out:
            write_manifest(out, m)
    return run


def test_flags_a_round_where_only_the_training_judge_improves(tmp_path):
    rows = [manifest(0, 0.6, 0.7), manifest(1, 0.7, 0.8), manifest(2, 0.65, 0.95)]
    assert diverging_rounds(rows) == [2]
    assert diverging_rounds([manifest(0, 0.6, 0.7), manifest(1, 0.6, 0.9)]) == [1]  # flat counts as "did not"
    recipe = parse_recipe(dict(RAW, run_dir=str(tmp_path / "run")), "r.yaml")
    run = commit(tmp_path, rows)
    write_report(recipe, run)
    text = (run.root / "report.md").read_text()
    assert "| 2 (!) | 10 | 0.650 ± 0.050 | 0.950 | 0.550 |" in text
    assert "| 1 | 10 | 0.700 ± 0.050 | 0.800 | 0.600 |" in text
    assert "| 0 | 10 | 0.600 ± 0.050 | 0.700 | 0.500 (unstable) | 20.0 (18.0) | 0.00 (0.00) | 0.00 (0.25) |" in text
    assert "Round(s) 2: the training judge's win rate rose while the eval judge's did not" in text
    assert "only 12 prompts" in text and "Warning" not in text
    assert (run.root / "report.png").stat().st_size > 1000


def test_warns_when_the_judge_is_the_training_scorer(tmp_path):
    recipe = parse_recipe(dict(RAW, run_dir=str(tmp_path / "run")), "r.yaml")
    run = commit(tmp_path, [manifest(0, 0.6, 0.6, independent=False)])
    write_report(recipe, run)
    text = (run.root / "report.md").read_text()
    assert "Warning: the eval judge is the training scorer" in text and "(!)" not in text


def test_best_of_column_only_when_measured():
    plain = format_table([manifest(0, 0.6, 0.7)])
    assert "best-of-N" not in plain
    table = format_table([manifest(0, 0.6, 0.7, best_of_win_rate=0.8, best_of_n=16)])
    assert "best-of-N" in table and "0.800 (N=16)" in table

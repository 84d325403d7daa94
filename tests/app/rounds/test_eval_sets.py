"""Several named eval sets per recipe (``eval.sets``): typed and strict, each set checked before the run with its
own key, its own baseline committed once per run, and every set side by side in the report. No Ray (the loop
runs them in tests/app/rounds/test_loop_eval_sets.py)."""

import json

import pytest

from prefloop.app.front.preflight import data_checks, model_checks
from prefloop.app.rounds import eval_sets, evaluate
from prefloop.app.storage.rundir import RunDir
from prefloop.core.config import RecipeError, parse_recipe

RAW = {"name": "t", "run_dir": "x", "policy": {"model": "/p"}, "data": {"train": "/d"},
       "scorer": {"kind": "pairrm", "model": "/r"}}


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def recipe_with_sets(main, sets, **eval_cfg):
    return parse_recipe({**RAW, "data": {"train": "/d", "eval": main}, "eval": {**eval_cfg, "sets": sets}}, "r")


def test_sets_are_typed_and_strict():
    recipe = recipe_with_sets("/m.jsonl", {"chat1m": {"data": "/c.jsonl", "limit": 500, "judge": {
        "kind": "function", "function": "m:f"}}})
    s = eval_sets.set_recipe(recipe, "chat1m")
    assert (s.data.eval, s.loop.eval_limit, s.eval.judge.kind, s.eval.baseline, s.eval.sets) == \
        ("/c.jsonl", 500, "function", "base", {})
    assert recipe.eval.judge is None and recipe.data.eval == "/m.jsonl"  # the main set is untouched
    for bad, match in [({"x": {"data": "/c", "best_of": 4}}, "best_of"), ({"a b": {"data": "/c"}}, "a b"),
                       ({"main": {"data": "/c"}}, "main"), ({"x": {}}, "data")]:
        with pytest.raises((RecipeError, ValueError), match=match):
            recipe_with_sets("/m.jsonl", bad)
    assert parse_recipe({**RAW, "data": {"train": "/d", "eval": "/m"}}, "r").eval.sets == {}  # old recipes


def test_each_set_is_checked_under_its_own_key(tmp_path):
    main = jsonl(tmp_path / "main.jsonl", [{"prompt": "q", "reference_output": "r"}])
    holes = jsonl(tmp_path / "holes.jsonl", [{"prompt": "q1", "reference_output": "r"}, {"prompt": "q2"}])
    recipe = recipe_with_sets(main, {"alpaca": {"data": holes, "baseline": "reference"},
                                     "gone": {"data": str(tmp_path / "nope.jsonl")},
                                     "judged": {"data": main, "judge": {"kind": "function", "function": "nomod:f"}}},
                              baseline="reference")
    problems = data_checks(recipe, [0], {"eval"})
    assert any(p.startswith("eval.sets.alpaca.data:") and holes in p and "line 2" in p for p in problems), problems
    assert any(p.startswith("eval.sets.gone.data:") and "nope.jsonl" in p for p in problems), problems
    assert len(problems) == 2
    assert any("eval.sets.judged.judge" in p for p in model_checks(recipe, {"eval"}, None))


class Tokenizer:
    name_or_path = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def test_each_sets_baseline_is_committed_once(tmp_path):
    main = jsonl(tmp_path / "main.jsonl", [{"prompt_id": "a", "prompt": "q", "reference_output": "main ref"}])
    other = jsonl(tmp_path / "other.jsonl", [{"prompt_id": "b", "prompt": "q2", "reference_output": "other ref"}])
    recipe = recipe_with_sets(main, {"other": {"data": other, "baseline": "reference"}}, baseline="reference")
    rows = evaluate.EvalRows([{"prompt_id": "a", "prompt": "q", "messages": "[]"}])
    rows.references = evaluate.reference_rows(recipe, rows, Tokenizer())
    set_recipe = eval_sets.set_recipe(recipe, "other")
    set_rows = evaluate.EvalRows([{"prompt_id": "b", "prompt": "q2", "messages": "[]"}])
    set_rows.references = evaluate.reference_rows(set_recipe, set_rows, Tokenizer())
    rows.sets = {"other": set_rows}
    run = RunDir(tmp_path / "run")
    base = evaluate.base_answers(recipe, run, rows, pool=None)
    assert [b["answer"] for b in base] == ["main ref"] and [b["answer"] for b in base.sets["other"]] == ["other ref"]
    assert run.is_committed(0, "base_answers") and run.is_committed(0, "base_answers-other")


def test_the_report_puts_every_set_side_by_side():
    def figures(w, lc, ae=None):
        return {"win_rate": w, "lc_win_rate": lc, "judge": "function", "baseline": "base",
                "eval_prompts": {"used": 12}, **({"alpaca_eval": ae} if ae else {})}

    rows = [{"round": r, **figures(0.5 + r / 10, 0.4), "eval_sets": {
        "alpaca": {**figures(0.2, 0.3, {"win_rate": 21.5, "length_controlled_winrate": 25.25}), "baseline": "reference"}}}
        for r in (0, 1)]
    lines = eval_sets.report_tables(rows)
    assert "| alpaca | function | reference | 12 |" in lines and "| main | function | base | 12 |" in lines
    assert "| 1 | 0.600 | 0.400 | 0.200 | 0.300 | - | - | 21.50 | 25.25 |" in lines
    assert eval_sets.report_tables([{"round": 0, "win_rate": 0.5}]) == []

"""``eval.baseline: reference`` (AlpacaEval's reference outputs as the baseline) and ``eval.max_tokens``: the
recipe check refuses a held-out file without reference outputs naming the file and row; the reference answers
become the run's committed baseline, and a run cannot switch baselines; the eval length is a recipe setting.
No Ray: the answers of the round are not generated here."""

import json

import pytest

from prefloop.app.front.preflight import data_checks
from prefloop.app.rounds import evaluate
from prefloop.app.storage.rundir import RunDir
from prefloop.core.config import RecipeError, parse_recipe
from prefloop.core.round_settings import sampling

RAW = {"name": "t", "run_dir": "x", "policy": {"model": "/p"}, "data": {"train": "/d"},
       "scorer": {"kind": "pairrm", "model": "/r"}}


def heldout(tmp_path, rows):
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def recipe_for(path, **eval_cfg):
    return parse_recipe({**RAW, "data": {"train": "/d", "eval": path}, "eval": eval_cfg}, "r")


ROWS = [{"prompt_id": "0", "prompt": "What is 2+2?", "reference_output": "4."},
        {"prompt_id": "1", "prompt": "Name a colour.", "reference_output": "Blue, the colour of the sky."}]


def test_recipe_check_refuses_a_reference_baseline_without_reference_outputs(tmp_path):
    path = heldout(tmp_path, [ROWS[0], {"prompt": "Name a colour."}, {**ROWS[1], "prompt_id": "2"}])
    problems = data_checks(recipe_for(path, baseline="reference"), [0], {"eval"})
    assert len(problems) == 1
    assert path in problems[0] and "line 2" in problems[0] and "'reference_output'" in problems[0]
    assert data_checks(recipe_for(path), [0], {"eval"}) == []  # the base model's answers need none


def test_a_named_reference_field_is_read(tmp_path):
    path = heldout(tmp_path, [{"prompt": "q", "output": "ref"}])
    assert data_checks(recipe_for(path, baseline="reference", reference_field="output"), [0], {"eval"}) == []
    assert "'reference_output'" in data_checks(recipe_for(path, baseline="reference"), [0], {"eval"})[0]


class Tokenizer:
    """Counts words (the reference's length in the policy's tokens is what is recorded)."""

    name_or_path = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def test_reference_answers_are_the_committed_baseline(tmp_path):
    path = heldout(tmp_path, ROWS)
    recipe = recipe_for(path, baseline="reference")
    rows = evaluate.EvalRows([{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "messages": "[]"} for r in ROWS])
    rows.references = evaluate.reference_rows(recipe, rows, Tokenizer())
    run = RunDir(tmp_path / "run")
    base = evaluate.base_answers(recipe, run, rows, pool=None)  # no model answers: no pool is touched
    assert [(b["answer"], b["num_tokens"], b["finish_reason"]) for b in base] == \
        [("4.", 1, "reference"), ("Blue, the colour of the sky.", 6, "reference")]
    assert run.manifest(0, "base_answers")["baseline"] == "reference"
    with pytest.raises(RuntimeError, match="baseline is 'reference'"):
        evaluate.base_answers(recipe_for(path), run, rows, pool=None)


def test_eval_max_tokens_sets_the_evaluated_answers_length():
    recipe = parse_recipe({**RAW, "rollout": {"max_tokens": 32}, "eval": {"max_tokens": 200, "best_of": 2}}, "r")
    assert sampling(recipe, "eval").max_tokens == 200 and sampling(recipe, "best_of").max_tokens == 200
    assert sampling(recipe, "rollout").max_tokens == 32
    assert sampling(parse_recipe({**RAW, "rollout": {"max_tokens": 32}}, "r"), "eval").max_tokens == 32
    with pytest.raises((RecipeError, ValueError), match="eval.max_prompt_tokens \+ eval.max_tokens"):
        parse_recipe({**RAW, "eval": {"max_tokens": 400}}, "r")  # 256 + 400 > max_model_len 512


def test_baseline_is_strict():
    with pytest.raises((RecipeError, ValueError), match="baseline"):
        parse_recipe({**RAW, "eval": {"baseline": "gpt4"}}, "r")


def test_prepared_alpaca_eval_keeps_the_reference_outputs_a_reference_baseline_reads(tmp_path):
    """`prefloop data prepare alpaca-eval` (AlpacaEval's schema) -> the recipe check accepts a reference baseline
    on its output, and each prompt's reference is the dataset's `output`."""
    from prefloop.app.data.data_prepare import prepare
    from prefloop.core.eval_reference import read_references
    from prefloop.core.prompts import Fields
    from tests import card_fixtures as fx

    prepare("alpaca-eval", {"a": str(fx.alpaca_eval(tmp_path / "ae"))}, tmp_path / "out")
    path = str(tmp_path / "out" / "prompts-0.parquet")
    assert data_checks(recipe_for(path, baseline="reference"), [0], {"eval"}) == []
    refs = read_references(path, Fields(), "reference_output")
    assert sorted(refs.values()) == [f"out {i}" for i in range(5)]

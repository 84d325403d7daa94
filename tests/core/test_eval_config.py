"""The recipe's ``eval`` section: typed and strict, every bad key named."""

import pytest

from prefloop.core.config import RecipeError, load_recipe

BASE = """
name: t
run_dir: runs/t
policy: {model: /p}
data: {train: /d.jsonl}
scorer: {kind: pairrm, model: /pairrm}
"""


def load(tmp_path, extra="", overrides=()):
    path = tmp_path / "r.yaml"
    path.write_text(BASE + extra)
    return load_recipe(path, overrides=list(overrides))


def test_absent_eval_means_the_training_scorer_judges(tmp_path):
    recipe = load(tmp_path)
    assert recipe.eval.judge is None and recipe.eval.best_of is None and recipe.eval_judge_kind is None


def test_function_judge_and_best_of(tmp_path):
    recipe = load(tmp_path, "eval: {judge: {kind: function, function: 'prefloop.tinyworld.gold:gold_score'}, "
                            "best_of: 16}\n")
    assert recipe.eval.judge.kind == "function" and recipe.eval.best_of == 16
    sc = recipe.eval.judge.as_scorer()
    assert (sc.kind, sc.function) == ("function", "prefloop.tinyworld.gold:gold_score")


def test_llm_judge_fields(tmp_path):
    recipe = load(tmp_path, "eval: {judge: {kind: llm_judge, base_url: 'http://h:8000/v1', model_name: j, "
                            "api_key_env: JUDGE_KEY, timeout_s: 5, retries: 0}}\n")
    j = recipe.eval.judge
    assert (j.base_url, j.model_name, j.api_key_env, j.timeout_s, j.retries, j.top_logprobs) == (
        "http://h:8000/v1", "j", "JUDGE_KEY", 5.0, 0, 5)
    with pytest.raises(ValueError, match="not a scorer stage"):
        j.as_scorer()


@pytest.mark.parametrize("extra, named", [
    ("eval: {judge: {kind: llm_judge, model_name: j}}\n", "eval.judge.base_url is required"),
    ("eval: {judge: {kind: pairrm}}\n", "eval.judge.model is required"),
    ("eval: {judge: {kind: function, function: nocolon}}\n", "eval.judge.function must be"),
    ("eval: {judge: {kind: function, function: 'a:b', base_url: 'http://x'}}\n", "only used by kind 'llm_judge'"),
    ("eval: {judge: {kind: gpt}}\n", "eval.judge.kind"),
    ("eval: {judge: {kind: llm_judge, base_url: u, model_name: j, timeout: 3}}\n", "eval.judge.timeout: unknown key"),
    ("eval: {best_of: 1}\n", "eval.best_of"),
    ("eval: {bestof: 4}\n", "eval.bestof: unknown key"),
])
def test_bad_eval_sections_are_named(tmp_path, extra, named):
    with pytest.raises(RecipeError, match=named.replace(".", r"\.").replace("(", r"\(")):
        load(tmp_path, extra)


def test_best_of_needs_a_pairrm_reranker(tmp_path):
    judge = "eval: {judge: {kind: function, function: 'a:b'}, best_of: 4}\n"
    assert load(tmp_path, judge).eval.best_of == 4  # the training scorer is PairRM: it reranks
    with pytest.raises(RecipeError, match=r"eval\.best_of needs a PairRM reranker"):
        load(tmp_path, judge, ["scorer.kind=function", "scorer.function=a:b", "scorer.model=null"])
    both = "eval: {judge: {kind: pairrm, model: /r}, best_of: 4}\n"
    assert load(tmp_path, both, ["scorer.kind=function", "scorer.function=a:b"]).eval.best_of == 4


@pytest.mark.parametrize("judge", ["{kind: function, function: 'a:b'}",
                                   "{kind: llm_judge, base_url: 'http://j/v1', model_name: j}",
                                   "{kind: llm_judge, base_url: 'http://j/v1', model_name: j, protocol: alpaca_eval}"])
def test_a_saved_recipe_loads_again(tmp_path, judge):
    """The run directory's recipe.yaml writes every field out (defaults too); loading it must give the same recipe."""
    from prefloop.core.config import dump_recipe

    recipe = load(tmp_path, f"eval: {{judge: {judge}}}\n")
    saved = tmp_path / "saved.yaml"
    saved.write_text(dump_recipe(recipe))
    assert load_recipe(saved) == recipe

"""Recipe loading: unknown keys and bad values are errors naming the key; overrides are validated too."""

import pytest

from prefloop.core.config import RecipeError, dump_recipe, load_recipe, parse_recipe

BASE = """
name: t
run_dir: runs/t
policy: {model: "{assets}/policy"}
data: {train: "{data}/prompts.jsonl"}
scorer: {kind: pairrm, model: "{assets}/pairrm"}
"""


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_loads_and_expands_placeholders(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE), placeholders={"assets": "/A", "data": "/D"})
    assert recipe.policy.model == "/A/policy"
    assert recipe.data.train == "/D/prompts.jsonl"
    assert recipe.rollout.num_samples == 4


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, BASE + "rollout: {num_sampels: 3}\n"))
    assert "rollout.num_sampels: unknown key" in str(err.value)
    assert "r.yaml" in str(err.value)


def test_bad_value_is_named(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, BASE), overrides=["rollout.num_samples=1"])
    assert "rollout.num_samples" in str(err.value)


def test_override_parses_yaml_values(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE), overrides=["rollout.num_samples=8", "rollout.seed=null",
                                                          "selection.tie_break=first"])
    assert (recipe.rollout.num_samples, recipe.rollout.seed, recipe.selection.tie_break) == (8, None, "first")


def test_placement_pins_actor_kinds_and_names_a_bad_kind(tmp_path):
    path = write(tmp_path, BASE)
    recipe = load_recipe(path, overrides=['resources.placement={"generator": {"gen_pool": 1}, "serve": {"s": 0.5}}'])
    assert recipe.resources.custom("generator") == {"gen_pool": 1.0} and recipe.resources.custom("train") == {}
    with pytest.raises(RecipeError, match="resources.placement"):
        load_recipe(path, overrides=['resources.placement={"generatr": {"gen_pool": 1}}'])


def test_override_without_equals_is_an_error(tmp_path):
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe(write(tmp_path, BASE), overrides=["rollout.num_samples"])


def test_scorer_needs_its_target():
    raw = {"name": "t", "run_dir": "r", "policy": {"model": "m"}, "data": {"train": "p"},
           "scorer": {"kind": "function"}}
    with pytest.raises(RecipeError, match="scorer.function"):
        parse_recipe(raw, "x.yaml")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "name: [unclosed"))


def test_dump_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE))
    again = load_recipe(write(tmp_path, dump_recipe(recipe)))
    assert again == recipe

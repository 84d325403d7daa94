"""Rollout and evaluation use the recipe's own response length, for every method (ReMax included)."""


from prefloop.core.config import load_recipe, response_tokens
from tests.paths import RECIPES

PH = {"assets": "a", "data": "d"}


def test_remax_uses_train_max_response_len():
    recipe = load_recipe(RECIPES / "remax-ultrarm.yaml", ["rollout.max_tokens=64"], placeholders=PH)
    assert response_tokens(recipe) == recipe.train.max_response_len == 384


def test_other_methods_use_the_rollout_length():
    assert response_tokens(load_recipe(RECIPES / "snorkel-pairrm-dpo.yaml", placeholders=PH)) == 512
    assert response_tokens(load_recipe(RECIPES / "demo.yaml", placeholders=PH)) == 48


def test_remax_follows_its_train_length_even_with_a_rollout_length():
    recipe = load_recipe(RECIPES / "remax-ultrarm.yaml", ["rollout.max_tokens=64", "train.max_response_len=200"],
                         placeholders=PH)
    assert response_tokens(recipe) == 200


def test_eval_and_rollout_specs_use_it():
    from prefloop.core.round_settings import sampling

    recipe = load_recipe(RECIPES / "remax-ultrarm.yaml", placeholders=PH)
    assert sampling(recipe, "rollout").max_tokens == 384

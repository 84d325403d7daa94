"""Rollout and evaluation use the recipe's own response length, for every method (ReMax included)."""

from pathlib import Path

from prefloop.core.config import load_recipe, response_tokens

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
PH = {"assets": "a", "data": "d"}


def test_remax_without_rollout_max_tokens_uses_train_max_response_len():
    recipe = load_recipe(RECIPES / "remax-ultrarm.yaml", placeholders=PH)
    assert "max_tokens" not in recipe.rollout.model_fields_set
    assert response_tokens(recipe) == 384


def test_rollout_max_tokens_wins_when_set():
    assert response_tokens(load_recipe(RECIPES / "snorkel-pairrm-dpo.yaml", placeholders=PH)) == 1024
    assert response_tokens(load_recipe(RECIPES / "remax-ultrarm.yaml", placeholders=PH, tiny=True)) == 32
    assert response_tokens(load_recipe(RECIPES / "demo.yaml", placeholders=PH)) == 48


def test_eval_and_rollout_specs_use_it():
    from prefloop.app.rollout import sample_spec

    recipe = load_recipe(RECIPES / "remax-ultrarm.yaml", placeholders=PH)
    assert sample_spec(recipe).max_tokens == 384

"""The held-out set: ``data.limit`` cuts training prompts only; rejected held-out records reach the eval stage."""

import json

import pytest

from prefloop.app.rounds import evaluate
from prefloop.core.config import load_recipe

pytestmark = pytest.mark.models  # loads models in-process (no Ray): deselected by `make test-fast`


def test_data_limit_leaves_the_eval_set_whole_and_rejections_are_recorded(tiny_assets, tmp_path):
    from transformers import AutoTokenizer

    held = tmp_path / "heldout.jsonl"
    rows = [{"prompt": f"Tell me about rivers number {i}."} for i in range(6)]
    rows.insert(2, {"prompt": " ".join(["river"] * 400)})  # over data.max_prompt_tokens
    rows.insert(4, {"nope": "no prompt field"})
    held.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text(f"""
name: t
run_dir: {tmp_path}/run
policy: {{model: {tiny_assets.policy}}}
data: {{train: {held}, eval: {held}, limit: 2, max_prompt_tokens: 64}}
scorer: {{kind: pairrm, model: {tiny_assets.pairrm}}}
train: {{method: dpo}}
loop: {{eval_limit: 64}}
""")
    recipe = load_recipe(tmp_path / "r.yaml")
    prepared = evaluate.eval_prompts(recipe, AutoTokenizer.from_pretrained(recipe.policy.model))
    assert len(prepared.rows) == 6  # all accepted held-out prompts, not data.limit's 2
    assert prepared.rows.counts == {"read": 8, "accepted": 6, "rejected": 2, "used": 6,
                                    "not_used_over_eval_limit": 0}
    reasons = sorted(r["location"] for r in prepared.rows.rejected)
    assert reasons == ["line 3", "line 5"] and all(r["reason"] for r in prepared.rows.rejected)


def test_eval_prompt_budget_and_reference_outputs(tiny_assets, tmp_path):
    """``eval.max_prompt_tokens`` keeps a long held-out prompt that ``data.max_prompt_tokens`` would refuse (all
    805 AlpacaEval prompts, whatever training's budget); ``eval.baseline: reference`` reads every used row's
    reference output with its length in the policy's tokens."""
    from transformers import AutoTokenizer

    held = tmp_path / "heldout.jsonl"
    rows = [{"prompt_id": f"p{i}", "prompt": f"Tell me about rivers number {i}.", "reference_output": f"Rivers {i}."}
            for i in range(3)]
    rows.append({"prompt_id": "long", "prompt": " ".join(["river"] * 400), "reference_output": "A long river."})
    held.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text(f"""
name: t
run_dir: {tmp_path}/run
policy: {{model: {tiny_assets.policy}}}
data: {{train: {held}, eval: {held}, max_prompt_tokens: 64}}
rollout: {{max_model_len: 1024}}
scorer: {{kind: pairrm, model: {tiny_assets.pairrm}}}
train: {{method: dpo}}
loop: {{eval_limit: null}}
eval: {{baseline: reference, max_prompt_tokens: 900, max_tokens: 100}}
""")
    recipe = load_recipe(tmp_path / "r.yaml")
    tok = AutoTokenizer.from_pretrained(recipe.policy.model)
    prepared = evaluate.eval_prompts(recipe, tok)
    assert [r["prompt_id"] for r in prepared.rows] == ["p0", "p1", "p2", "long"] and not prepared.rows.rejected
    refs = prepared.rows.references
    assert refs["long"]["answer"] == "A long river."
    assert refs["p1"]["num_tokens"] == len(tok("Rivers 1.", add_special_tokens=False)["input_ids"]) > 0

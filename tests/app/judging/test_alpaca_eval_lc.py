"""AlpacaEval's figures of a round: its win rate and its LC win rate, checked against AlpacaEval's own
``get_length_controlled_winrate`` (the ``length_controlled_minimal`` GLM; its hub download of df_gamed.csv is
replaced by a local file, since the minimal GLM uses none of that file's columns) and against hand values."""

import random

import pandas as pd
import pytest

from prefloop.app.judging import alpaca_eval_lc

pytest.importorskip("alpaca_eval")
from alpaca_eval.metrics import glm_winrate  # noqa: E402


def annotations(n=60, seed=0):
    """Preferences in [1, 2] that lean towards the longer answer, with lengths that vary."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        base, out = "b" * rng.randint(20, 400), "o" * rng.randint(20, 400)
        lean = 0.25 + 0.5 * (len(out) > len(base))
        pref = min(2.0, max(1.0, 1 + lean + rng.uniform(-0.25, 0.25)))
        rows.append({"instruction": f"q{i}", "output_1": base, "output_2": out, "preference": pref, "index": i,
                     "generator_1": "reference", "generator_2": "round", "annotator": "a"})
    return pd.DataFrame(rows)


def test_lc_win_rate_is_alpaca_evals_own(tmp_path, monkeypatch):
    df = annotations()
    gamed = tmp_path / "df_gamed.csv"
    pd.DataFrame({"model": "m", "index": range(len(df)), "instruction_difficulty": 0.0}).to_csv(gamed, index=False)
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda **kw: str(gamed))
    theirs = glm_winrate.get_length_controlled_winrate(df.copy(), glm_name="length_controlled_minimal",
                                                       save_weights_dir=None, is_add_glm_preference_inplace=False)
    mine = alpaca_eval_lc.figures(df["preference"].tolist(), df["output_2"].tolist(), df["output_1"].tolist())
    assert mine["length_controlled_winrate"] == pytest.approx(theirs["length_controlled_winrate"], abs=1e-9)
    assert mine["lc_standard_error"] == pytest.approx(theirs["lc_standard_error"], abs=1e-9)
    assert mine["win_rate"] == pytest.approx((df["preference"] - 1).mean() * 100)  # by hand
    # the answers win by being longer: controlling for length pulls the rate towards 50
    assert abs(mine["length_controlled_winrate"] - 50) < abs(mine["win_rate"] - 50)


def test_too_few_prompts_for_the_cross_validation_are_reported_not_fitted():
    df = annotations(n=6)
    out = alpaca_eval_lc.figures(df["preference"].tolist(), df["output_2"].tolist(), df["output_1"].tolist())
    assert out["length_controlled_winrate"] is None and "too few" in out["lc_unstable_reason"]
    assert out["win_rate"] == pytest.approx((df["preference"] - 1).mean() * 100)


def test_equal_lengths_cannot_be_length_controlled():
    out = alpaca_eval_lc.figures([1.2, 1.8] * 10, ["x" * 9] * 20, ["y" * 9] * 20)
    assert out["length_controlled_winrate"] is None and "zero variance" in out["lc_unstable_reason"]


def test_the_eval_manifest_carries_alpaca_evals_figures():
    """``judged_summary`` with AlpacaEval verdicts: the ``alpaca_eval`` section, on the answers' own texts."""
    from prefloop.app.rounds.evaluate import judged_summary
    from prefloop.core.config import parse_recipe

    recipe = parse_recipe({"name": "t", "run_dir": "x", "policy": {"model": "/p"}, "data": {"train": "/d"},
                           "scorer": {"kind": "pairrm", "model": "/r"}, "eval": {"baseline": "reference", "judge": {
                               "kind": "llm_judge", "protocol": "alpaca_eval", "base_url": "http://h/v1",
                               "model_name": "j", "orders": "alpaca_eval"}}}, "t")
    df = annotations(n=40, seed=1)
    answers = [{"prompt_id": f"p{i}", "prompt": "q", "messages": "[]", "answer": r.output_2, "num_tokens": 3,
                "finish_reason": "stop"} for i, r in enumerate(df.itertuples())]
    base = [{**a, "answer": r.output_1, "finish_reason": "reference"} for a, r in zip(answers, df.itertuples())]
    verdicts = [{"preference": p - 1, "alpaca_eval_preference": p} for p in df["preference"]]
    m = judged_summary(recipe, answers, base, [{"score": 0.0, "base_score": 0.0, "preference": 0.5}] * 40, verdicts)
    ae = m["alpaca_eval"]
    assert (ae["annotator"], ae["orders"], ae["baseline"], m["baseline"]) == \
        ("weighted_alpaca_eval_gpt4_turbo", "alpaca_eval", "reference", "reference")
    assert ae["win_rate"] == pytest.approx(m["win_rate"] * 100) and ae["n_total"] == 40
    direct = alpaca_eval_lc.length_controlled(df["preference"], df["output_2"], df["output_1"])
    assert ae["length_controlled_winrate"] == pytest.approx(direct["length_controlled_winrate"])
    assert ae["lc_glm"] == "length_controlled_minimal"

"""``eval.leaderboard`` (core/leaderboard.py): the strict config, the card's six tasks in the Archangel recipe, and
the manifest figures read out of lm_eval's results (percent, stderr, average; wrong few-shot counts and missing
metrics are errors)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prefloop.core.config import load_recipe
from prefloop.core.leaderboard import CARD_TASKS, LeaderboardConfig, figures
from tests.paths import RECIPES

# The archangel_sft-kto_llama13b card's Open LLM Leaderboard figures (its model-index): task -> (shots, metric, value)
CARD = {"arc_challenge": (25, "acc_norm", 56.14), "hellaswag": (10, "acc_norm", 80.80), "mmlu": (5, "acc", 47.84),
        "truthfulqa_mc2": (0, "acc", 39.42), "winogrande": (5, "acc", 76.16), "gsm8k": (5, "exact_match", 16.83)}


def test_counts_are_short_for_tasks_and_unknown_keys_are_errors():
    cfg = LeaderboardConfig.model_validate({"tasks": {"arc_challenge": 25}})
    assert cfg.tasks["arc_challenge"].num_fewshot == 25 and cfg.metric("arc_challenge") == "acc_norm,none"
    with pytest.raises(ValidationError, match="shots"):
        LeaderboardConfig.model_validate({"tasks": {"arc_challenge": {"shots": 25}}})
    with pytest.raises(ValidationError, match="num_fewshot"):
        LeaderboardConfig.model_validate({"tasks": {"arc_challenge": -1}})
    with pytest.raises(ValidationError, match="tasks"):
        LeaderboardConfig.model_validate({"tasks": {}})


def test_a_task_outside_the_leaderboard_must_name_its_metric():
    with pytest.raises(ValidationError, match=r"tasks\.tiny_arc\.metric is required"):
        LeaderboardConfig.model_validate({"tasks": {"tiny_arc": 2}})
    cfg = LeaderboardConfig.model_validate({"tasks": {"tiny_arc": {"num_fewshot": 2, "metric": "acc_norm,none"}}})
    assert cfg.metric("tiny_arc") == "acc_norm,none"


def test_archangel_recipe_runs_the_cards_six_tasks_as_the_leaderboard_did():
    lb = load_recipe(RECIPES / "archangel-sft-kto.yaml").eval.leaderboard
    assert set(lb.tasks) == set(CARD) == set(CARD_TASKS)
    for name, (shots, metric, value) in CARD.items():
        assert lb.tasks[name].num_fewshot == shots == CARD_TASKS[name].num_fewshot, name
        assert lb.metric(name).split(",")[0] == metric, name
        assert lb.tasks[name].card == value, name
    assert lb.metric("gsm8k") == "exact_match,strict-match" and lb.backend == "vllm" and lb.limit is None


def test_archangel_tiny_runs_the_local_arc_style_task():
    lb = load_recipe(RECIPES / "archangel-sft-kto.yaml", placeholders={"data": "/d", "assets": "/a"},
                     tiny=True).eval.leaderboard
    assert set(lb.tasks) == {"tiny_arc"} and lb.include_path == "/d/leaderboard" and lb.backend == "hf"
    assert lb.num_gpus == 0


def lm_eval_output(shots: int = 25) -> dict:
    return {"results": {"arc_challenge": {"acc,none": 0.5, "acc_norm,none": 0.5614, "acc_norm_stderr,none": 0.0145},
                        "gsm8k": {"exact_match,strict-match": 0.1683, "exact_match_stderr,strict-match": "N/A",
                                  "exact_match,flexible-extract": 0.2}},
            "n-shot": {"arc_challenge": shots, "gsm8k": 5},
            "n-samples": {"arc_challenge": {"original": 1172, "effective": 1172}}}


def test_figures_are_the_metric_in_percent_with_the_card_beside_it():
    cfg = LeaderboardConfig.model_validate({"tasks": {"arc_challenge": {"num_fewshot": 25, "card": 56.14},
                                                      "gsm8k": 5}})
    out = figures(cfg, lm_eval_output())
    arc, gsm = out["leaderboard"]["arc_challenge"], out["leaderboard"]["gsm8k"]
    assert arc["score"] == pytest.approx(56.14) and arc["stderr"] == pytest.approx(1.45)
    assert arc["card"] == 56.14 and arc["items"] == 1172 and arc["num_fewshot"] == 25
    assert gsm["score"] == pytest.approx(16.83) and gsm["stderr"] is None and gsm["items"] is None
    assert out["leaderboard_average"] == pytest.approx((56.14 + 16.83) / 2)


def test_a_group_is_checked_and_counted_over_its_tasks():
    out = {"results": {"mmlu": {"acc,none": 0.4784, "acc_stderr,none": 0.004}},
           "group_subtasks": {"mmlu": ["mmlu_stem", "mmlu_other"], "mmlu_stem": ["mmlu_algebra", "mmlu_physics"],
                              "mmlu_other": ["mmlu_nutrition"]},
           "n-shot": {"mmlu_algebra": 5, "mmlu_physics": 5, "mmlu_nutrition": 5},
           "n-samples": {"mmlu_algebra": {"effective": 100}, "mmlu_physics": {"effective": 102},
                         "mmlu_nutrition": {"effective": 306}}}
    cfg = LeaderboardConfig.model_validate({"tasks": {"mmlu": 5}})
    mmlu = figures(cfg, out)["leaderboard"]["mmlu"]
    assert mmlu["score"] == pytest.approx(47.84) and mmlu["items"] == 508
    out["n-shot"]["mmlu_physics"] = 0
    with pytest.raises(ValueError, match=r"ran task mmlu_physics \(of mmlu\) 0-shot, not 5-shot"):
        figures(cfg, out)


def test_figures_fail_on_another_few_shot_count_or_a_missing_metric():
    cfg = LeaderboardConfig.model_validate({"tasks": {"arc_challenge": 25}})
    with pytest.raises(ValueError, match="ran task arc_challenge 0-shot, not 25-shot"):
        figures(cfg, lm_eval_output(shots=0))
    cfg = LeaderboardConfig.model_validate({"tasks": {"arc_challenge": {"num_fewshot": 25, "metric": "f1,none"}}})
    with pytest.raises(ValueError, match="no 'f1,none'"):
        figures(cfg, lm_eval_output())
    with pytest.raises(ValueError, match="task hellaswag"):
        figures(LeaderboardConfig.model_validate({"tasks": {"hellaswag": 10}}), lm_eval_output())

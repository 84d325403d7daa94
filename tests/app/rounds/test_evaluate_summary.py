"""The eval manifest's keys from both judges' verdicts (no Ray: the judging itself is in the Ray loop tests)."""

import pytest

from prefloop.app.rounds.evaluate import NOT_INDEPENDENT, answer_rows, judged_summary
from prefloop.core.config import parse_recipe

RAW = {"name": "t", "run_dir": "x", "policy": {"model": "/p"}, "data": {"train": "/d"},
       "scorer": {"kind": "pairrm", "model": "/r"}}


def sides():
    answers = [{"prompt_id": f"p{i}", "prompt": "q", "messages": "[]", "answer": text, "num_tokens": n,
                "finish_reason": fr} for i, (text, n, fr) in
               enumerate([("A b. A b.", 10, "length"), ("c d e", 4, "stop"), ("f g", 6, "stop"), ("h", 2, "stop")])]
    base = [{"prompt_id": f"p{i}", "prompt": "q", "messages": "[]", "answer": "x y", "num_tokens": 5,
             "finish_reason": "stop"} for i in (3, 2, 1, 0)]  # another order: matched by prompt_id
    return answers, base


def test_independent_judge_summary():
    recipe = parse_recipe({**RAW, "eval": {"judge": {"kind": "function", "function": "m:f"}}}, "r")
    answers, base = sides()
    training = [{"score": s, "base_score": 0.0, "preference": p} for s, p in ((1, 1.0), (1, 1.0), (1, 1.0), (0, 0.5))]
    verdicts = [{"score": s, "base_score": 0.0, "preference": p} for s, p in ((1, 1.0), (-1, 0.0), (0, 0.5), (0, 0.5))]
    m = judged_summary(recipe, answers, base, training, verdicts)
    assert m["win_rate"] == 0.5 and m["scorer_win_rate"] == pytest.approx(3.5 / 4)
    assert (m["wins"], m["ties"], m["losses"]) == (1, 2, 1)
    assert m["judge"] == "function" and m["judge_independent"] is True and "warning" not in m
    assert m["mean_length"] == 5.5 and m["base_mean_length"] == 5.0 and m["truncation_rate"] == 0.25
    assert m["repetition_rate"] == pytest.approx(0.5 / 4) and m["base_truncation_rate"] == 0.0
    assert m["lc_unstable"] and "only 4 prompts" in m["lc_unstable_reason"]
    assert m["eval_mean_score"] == 0.0 and m["mean_score"] == 0.75  # mean_score stays the training scorer's
    rows = answer_rows(answers, base, training, verdicts)
    assert [(r["outcome"], r["eval_outcome"]) for r in rows] == [("win", "win"), ("win", "loss"), ("win", "tie"),
                                                                 ("tie", "tie")]
    assert rows[1]["eval_score"] == -1 and rows[1]["base_finish_reason"] == "stop"


def test_no_eval_judge_means_the_training_scorer_with_a_warning():
    recipe = parse_recipe(RAW, "r")
    answers, base = sides()
    training = [{"score": 1.0, "base_score": 0.0, "preference": 1.0}] * 4
    m = judged_summary(recipe, answers, base, training, training)
    assert m["judge"] == "pairrm" and m["judge_independent"] is False and m["warning"] == NOT_INDEPENDENT
    assert m["win_rate"] == m["scorer_win_rate"] == 1.0
    same = parse_recipe({**RAW, "eval": {"judge": {"kind": "pairrm", "model": "/r"}}}, "r")
    assert judged_summary(same, answers, base, training, training)["judge_independent"] is False


def test_a_base_stage_without_finish_reasons_reports_no_truncation_rate():
    recipe = parse_recipe(RAW, "r")
    answers, base = sides()
    for b in base:
        del b["finish_reason"]
    training = [{"score": 1.0, "base_score": 0.0, "preference": 1.0}] * 4
    m = judged_summary(recipe, answers, base, training, training)
    assert m["base_truncation_rate"] is None and m["base_mean_length"] == 5.0


def test_the_eval_judge_is_checked_before_any_round(tmp_path, monkeypatch):
    from prefloop.app.judging.eval_judges import preflight
    from prefloop.core.config import RecipeError

    def judge(**j):
        return parse_recipe({**RAW, "eval": {"judge": j}}, "r")

    preflight(judge(kind="function", function="prefloop.core.eval_metrics:preference"))
    with pytest.raises(RecipeError, match="eval.judge.function: .*no_such_module"):
        preflight(judge(kind="function", function="no_such_module:f"))
    with pytest.raises(FileNotFoundError, match="eval.judge.model"):
        preflight(judge(kind="pairrm", model=str(tmp_path / "none")))
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(RuntimeError, match="NO_SUCH_KEY_VAR is not set"):
        preflight(judge(kind="llm_judge", base_url="http://x/v1", model_name="j", api_key_env="NO_SUCH_KEY_VAR"))


def test_a_function_eval_judge_is_called_on_the_driver_with_the_base_answer_second():
    from prefloop.app.judging.eval_judges import function_verdicts
    from prefloop.tinyworld.gold import gold_score

    good = "Bees make honey. A bee visits many flowers. The hive keeps the queen and her workers busy all day."
    off = "By the way, watch the lava closely."
    answers = [{"prompt_id": "a", "prompt": "Explain bees.", "answer": good},
               {"prompt_id": "b", "prompt": "Explain bees.", "answer": off},
               {"prompt_id": "c", "prompt": "Explain bees.", "answer": off}]
    base = [{"prompt_id": "c", "answer": off}, {"prompt_id": "b", "answer": good}, {"prompt_id": "a", "answer": off}]
    verdicts = function_verdicts("prefloop.tinyworld.gold:gold_score", answers, base)
    assert [v["preference"] for v in verdicts] == [1.0, 0.0, 0.5]  # win, loss, tie (the same answer)
    assert verdicts[0] == {"score": gold_score("Explain bees.", good), "base_score": gold_score("Explain bees.", off),
                           "preference": 1.0}

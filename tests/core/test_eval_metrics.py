"""Evaluation metrics against hand-computed values: win rate, length-controlled win rate, answer statistics."""

import math

import pytest

from prefloop.core.eval_metrics import (
    MIN_LC_PROMPTS,
    answer_metrics,
    distinct_2,
    lc_win_rate,
    preference,
    repetition_rate,
    sentences,
    truncation_rate,
    win_rate,
)


def test_win_rate_counts_ties_half_and_its_stderr_is_that_of_the_mean():
    prefs = [preference(1, 0), preference(0, 1), preference(2, 2), preference(3, 1)]
    assert prefs == [1.0, 0.0, 0.5, 1.0]
    rate, se = win_rate(prefs)
    assert rate == pytest.approx(0.625)
    # population variance: (0.375^2 * 2 + 0.625^2 + 0.125^2) / 4 = 0.171875
    assert se == pytest.approx(math.sqrt(0.171875 / 4))
    rate, se = win_rate([1, 1, 0, 1])  # no ties: the binomial formula
    assert se == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    with pytest.raises(ValueError):
        win_rate([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        win_rate([1.2])


def test_lc_win_rate_is_the_fit_at_zero_length_difference():
    # 4 prompts with equal lengths (z = 0) win 1 of 4; 4 whose answer is 12 tokens longer win 3 of 4.
    # Two z values: the fit reproduces both group means, so sigmoid(a) = 0.25 exactly (plain win rate 0.5);
    # sd of the differences [0]*4 + [12]*4 is 6, so z = 2 there and b = (logit .75 - logit .25) / 2 = ln 3.
    prefs = [1, 0, 0, 0, 1, 1, 1, 0]
    lengths, base = [10] * 4 + [22] * 4, [10] * 8
    res = lc_win_rate(prefs, lengths, base)
    assert res.lc_win_rate == pytest.approx(0.25, abs=1e-6)
    assert res.intercept == pytest.approx(math.log(1 / 3), abs=1e-6) and res.slope == pytest.approx(math.log(3), abs=1e-6)
    assert res.unstable and "only 8 prompts" in res.reason  # fitted, but flagged: few prompts
    k = MIN_LC_PROMPTS // 8 + 1
    many = lc_win_rate(prefs * k, lengths * k, base * k)
    assert many.lc_win_rate == pytest.approx(0.25, abs=1e-6) and not many.unstable and many.reason is None


def test_lc_win_rate_with_ties_stays_finite():
    prefs = [0.5, 0, 1, 0.5, 1, 1]
    res = lc_win_rate(prefs, [5, 3, 9, 6, 8, 12], [5, 5, 5, 5, 5, 5])
    assert res.intercept is not None and 0 < res.lc_win_rate < 1


@pytest.mark.parametrize("prefs, lengths, reason", [
    ([1, 1, 1, 1], [3, 5, 7, 9], "every preference is 1"),
    ([1, 0, 1, 0], [8, 8, 8, 8], "zero variance"),
    ([0, 0, 1, 1], [1, 3, 8, 10], "separated by length"),
    ([1, 1, 0, 0], [1, 3, 3, 10], "separated by length"),  # quasi-complete: a win and a loss share z
])
def test_lc_win_rate_unfittable_falls_back_to_the_plain_win_rate(prefs, lengths, reason):
    res = lc_win_rate(prefs, lengths, [4] * len(prefs))
    assert res.unstable and reason in res.reason and res.intercept is None
    assert res.lc_win_rate == pytest.approx(sum(prefs) / len(prefs))


def test_truncation_rate():
    assert truncation_rate(["stop", "length", "length", "stop"]) == 0.5
    with pytest.raises(ValueError):
        truncation_rate([])


def test_sentences_split_and_normalise():
    assert sentences("The mouse, here.  the MOUSE here! Pi is 3.5 ok?\nnew line") == [
        "the mouse here", "the mouse here", "pi is 3 5 ok", "new line"]
    assert sentences("  ... ") == []


def test_repetition_rate_averages_per_answer_shares():
    texts = ["A cat. A cat. A dog.", "One! Two? one", ""]
    assert repetition_rate(texts) == pytest.approx((1 / 3 + 1 / 3 + 0) / 3)
    assert repetition_rate(["There is a lot of mouse in it. " * 4]) == pytest.approx(3 / 4)


def test_distinct_2_over_all_answers():
    assert distinct_2(["a b a b", "a b"]) == pytest.approx(2 / 4)  # (a b) (b a) (a b) | (a b)
    assert distinct_2(["x", ""]) == 0.0


def test_answer_metrics_prefix_and_mismatch():
    m = answer_metrics(["a b. a b.", "c d"], [4, 2], ["stop", "length"], prefix="base_")
    assert m == {"base_mean_length": 3.0, "base_truncation_rate": 0.5, "base_repetition_rate": 0.25,
                 "base_distinct_2": pytest.approx(3 / 4)}
    with pytest.raises(ValueError):
        answer_metrics(["a"], [1, 2], ["stop"])

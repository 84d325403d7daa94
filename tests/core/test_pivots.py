"""Two-pivot scoring against a Bradley-Terry judge with known strengths and an additive position bias: the scores
are the hand-computed 2 s_i - (s_a + s_b), the bias cancels, and all 2(N-1) passes go to the judge in one call."""

import random

import pytest

from prefloop.core.pivots import passes_needed, pivot_passes, pivot_scores

BIAS = 0.7  # the judge favours whichever candidate is shown first by this much


def bt_judge(strengths, calls, bias=BIAS):
    """Logit that `first` beats `second`: s_first - s_second + bias. Records each call's passes."""
    def judge(passes):
        calls.append(list(passes))
        return [strengths[p][i] - strengths[p][j] + bias for p, i, j in passes]
    return judge


def test_scores_are_strengths_relative_to_the_pivots_with_the_bias_cancelled():
    strengths = [[0.5, -1.0, 2.0, 0.25, -3.0]]
    calls = []
    scores = pivot_scores([5], bt_judge(strengths, calls))
    # by hand: 2 s_i - (s_a + s_b) with s_a + s_b = 0.5 - 1.0 = -0.5
    assert scores == [pytest.approx([1.5, -1.5, 4.5, 1.0, -5.5])]
    assert len(calls) == 1 and len(calls[0]) == passes_needed(5) == 8


def test_score_differences_are_the_full_rankings():
    """Blender.rank's score for i is mean_j (L[i,j] - L[j,i]): the same differences for a BT judge."""
    s = [0.3, 1.1, -0.4, 0.9]
    full = [sum((s[i] - s[j] + BIAS) - (s[j] - s[i] + BIAS) for j in range(4)) / 4 for i in range(4)]
    piv = pivot_scores([4], bt_judge([s], []))[0]
    for i in range(4):
        assert piv[i] - piv[0] == pytest.approx(full[i] - full[0])


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_best_and_worst_recovered_in_one_call_of_2n_minus_2_passes(n):
    rng = random.Random(n)
    strengths = [[rng.gauss(0, 1) for _ in range(n)] for _ in range(40)]
    calls = []
    out = pivot_scores([n] * 40, bt_judge(strengths, calls, bias=rng.uniform(-2, 2)))
    for s, row in zip(strengths, out):
        assert row.index(max(row)) == s.index(max(s)) and row.index(min(row)) == s.index(min(s))
    assert len(calls) == 1 and len(calls[0]) == 40 * 2 * (n - 1)


def test_each_candidate_is_shown_once_first_and_once_second():
    passes = pivot_passes([5])
    assert len(set(passes)) == len(passes) == 8
    shown = [(sum(1 for _, i, _ in passes if i == c), sum(1 for _, _, j in passes if j == c)) for c in range(5)]
    assert shown == [(1, 4), (4, 1), (1, 1), (1, 1), (1, 1)]  # (first, second): pivot a mostly second, b first
    assert sorted(passes[:2]) == [(0, 0, 1), (0, 1, 0)]  # the pivots meet in both orders


def test_two_candidates_are_compared_in_both_orders():
    calls = []
    out = pivot_scores([2], bt_judge([[1.0, 3.0]], calls))
    assert out == [pytest.approx([-2.0, 2.0])]
    assert sorted(calls[0]) == [(0, 0, 1), (0, 1, 0)]


def test_mixed_sizes_and_a_lone_candidate():
    strengths = [[2.0], [1.0, 0.0, 4.0], [0.0, 1.0]]
    calls = []
    out = pivot_scores([1, 3, 2], bt_judge(strengths, calls))
    assert out[0] == [0.0]  # as Blender.rank scores a lone candidate
    assert out[1] == pytest.approx([1.0, -1.0, 7.0]) and out[2] == pytest.approx([-1.0, 1.0])
    assert len(calls) == 1 and len(calls[0]) == 0 + 4 + 2
    assert pivot_scores([1, 1], bt_judge([[0.0], [0.0]], calls)) == [[0.0], [0.0]]
    assert len(calls) == 1  # nothing to compare: the judge is not called


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="at least 1 candidate, got 0"):
        pivot_scores([3, 0], bt_judge([[0.0] * 3], []))
    with pytest.raises(RuntimeError, match="judge returned 3 logits for 4 passes"):
        pivot_scores([3], lambda passes: [0.0] * 3)

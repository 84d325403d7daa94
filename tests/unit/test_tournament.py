"""The min-max tournament against a judge with known strengths: it finds the true best and worst, with the
number of comparisons the textbook bound gives, batched by round across prompts."""

import random

import pytest

from prefloop.core.tournament import comparisons_needed, min_max_tournament, tournament_scores


def strength_judge(strengths, calls):
    def compare(todo):
        calls.append(len(todo))
        return [strengths[p][i] - strengths[p][j] for p, i, j in todo]
    return compare


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 8, 16])
def test_finds_true_best_and_worst_with_3n_over_2_comparisons(n):
    rng = random.Random(n)
    strengths = [[rng.random() for _ in range(n)] for _ in range(50)]
    calls = []
    out = min_max_tournament([n] * 50, strength_judge(strengths, calls))
    for s, (best, worst, margin) in zip(strengths, out):
        assert best == max(range(n), key=s.__getitem__) and worst == min(range(n), key=s.__getitem__)
        assert margin == pytest.approx(s[best] - s[worst])
    per_prompt = sum(calls) / 50
    assert comparisons_needed(n) <= per_prompt <= comparisons_needed(n) + 1
    assert per_prompt < n * (n - 1) / 2 or n <= 3


def test_hand_counted_bounds():
    assert [comparisons_needed(n) for n in (2, 3, 4, 5, 16)] == [1, 3, 4, 6, 22]


def test_rounds_are_batched_across_prompts():
    calls = []
    strengths = [[0.1, 0.9, 0.5, 0.3, 0.7]] * 32
    min_max_tournament([5] * 32, strength_judge(strengths, calls))
    assert len(calls) <= 5 and sum(calls) >= 32 * comparisons_needed(5)


def test_mixed_sizes_and_ties():
    strengths = [[0.0, 0.0], [1.0, 3.0, 2.0], [5.0] * 4]
    out = min_max_tournament([2, 3, 4], strength_judge(strengths, []))
    assert out[1][:2] == (1, 0)
    assert {out[0][0], out[0][1]} == {0, 1} and out[0][2] == 0.0
    assert out[2][0] != out[2][1]  # all tied: still two different candidates


def test_scores_put_best_and_worst_at_the_extremes():
    assert tournament_scores(4, 2, 0, 3.0) == [-1.5, 0.0, 1.5, 0.0]


def test_a_judge_that_loses_answers_is_an_error():
    with pytest.raises(RuntimeError, match="logits for"):
        min_max_tournament([4], lambda todo: [])
    with pytest.raises(ValueError, match="at least 2"):
        min_max_tournament([1], lambda todo: [])

"""Win rate counts ties as half, and reports its standard error."""

import math

import pytest

from prefloop.core.metrics import summarize_comparison


def test_win_rate_with_ties():
    s = summarize_comparison([(1, 0), (0, 1), (2, 2), (3, 1)], [4, 5, 6, 7], [1, 1, 1, 1])
    assert (s["wins"], s["ties"], s["losses"]) == (2, 1, 1)
    assert s["win_rate"] == pytest.approx(2.5 / 4)
    assert s["win_rate_stderr"] == pytest.approx(math.sqrt(0.171875 / 4))  # that of the mean preference
    assert s["mean_score"] == pytest.approx(1.5) and s["mean_base_score"] == pytest.approx(1.0)
    assert (s["mean_length"], s["mean_base_length"]) == (5.5, 1.0)


def test_empty_and_mismatched():
    with pytest.raises(ValueError):
        summarize_comparison([], [], [])
    with pytest.raises(ValueError):
        summarize_comparison([(1, 0)], [1, 2], [1])

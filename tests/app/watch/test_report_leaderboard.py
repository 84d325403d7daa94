"""The report's leaderboard section (app/watch/report_leaderboard.py): the card's figure beside each round's, the
average row, and a note when a round's figures are not in the card's terms (a limit, another few-shot count)."""

from __future__ import annotations

from prefloop.app.watch.report_leaderboard import report_section


def task(score: float, card: float | None, shots: int, limit: int | None = None, metric: str = "acc_norm,none"):
    return {"metric": metric, "num_fewshot": shots, "score": score, "stderr": 1.0, "card": card, "items": 10,
            "limit": limit}


def manifest(r: int, arc: float, gsm: float, limit: int | None = None) -> dict:
    tasks = {"arc_challenge": task(arc, 56.14, 25, limit),
             "gsm8k": task(gsm, 16.83, 5, limit, "exact_match,strict-match")}
    return {"round": r, "leaderboard": tasks, "leaderboard_average": (arc + gsm) / 2}


def test_each_rounds_scores_stand_beside_the_cards():
    text = "\n".join(report_section([manifest(0, 50.0, 10.0), manifest(1, 52.5, 12.0)]))
    assert "## Open LLM Leaderboard tasks" in text
    assert "| ARC | `arc_challenge` (acc_norm, 25-shot) | 56.14 | 50.00 ± 1.00 | 52.50 ± 1.00 |" in text
    assert "| GSM8k | `gsm8k` (exact_match, 5-shot) | 16.83 | 10.00 ± 1.00 | 12.00 ± 1.00 |" in text
    assert "| average |  | 36.48 | 30.00 | 32.25 |" in text
    assert "Not in the card's terms" not in text


def test_a_limited_or_other_shot_run_is_flagged_and_rounds_without_it_add_nothing():
    odd = manifest(0, 50.0, 10.0, limit=4)
    odd["leaderboard"]["arc_challenge"]["num_fewshot"] = 5
    text = "\n".join(report_section([odd, {"round": 1}]))
    assert "`arc_challenge` scored on at most 4 items" in text
    assert "`arc_challenge` ran 5-shot; the leaderboard's is 25-shot" in text
    assert "round 1" not in text  # a round without the tasks gets no column
    assert report_section([{"round": 0, "win_rate": 0.5}]) == []

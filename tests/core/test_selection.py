"""Selection of DPO pairs and KTO examples: best vs worst, ties, margins, length penalty."""

import pytest

from prefloop.core.selection import PAIRED, choose_pair, dpo_pair, effective_scores, kto_examples


def test_best_and_worst():
    c = choose_pair([0.1, 0.9, -0.5, 0.2], [5, 5, 5, 5], ["a", "b", "c", "d"])
    assert (c.status, c.best, c.worst) == (PAIRED, 1, 2)
    assert c.margin == pytest.approx(1.4)


def test_all_tie_forms_no_pair():
    assert choose_pair([1.0, 1.0, 1.0], [3, 4, 5], ["a", "b", "c"]).status == "all candidates tie"


def test_min_margin():
    c = choose_pair([0.0, 0.05], [1, 1], ["a", "b"], min_margin=0.1)
    assert c.status.startswith("margin") and c.best is None


def test_tie_break_shortest_prefers_short_best_and_long_worst():
    scores, lengths = [1.0, 1.0, 0.0, 0.0], [9, 3, 2, 7]
    c = choose_pair(scores, lengths, ["a", "b", "c", "d"], tie_break="shortest")
    assert (c.best, c.worst) == (1, 3)
    c = choose_pair(scores, lengths, ["a", "b", "c", "d"], tie_break="first")
    assert (c.best, c.worst) == (0, 2)
    assert choose_pair(scores, lengths, ["a", "b", "c", "d"], tie_break="skip").status.startswith("tie")


def test_length_penalty_changes_the_winner():
    # 1.0 - 0.1*10 = 0.0 ; 0.8 - 0.1*2 = 0.6 ; 0.1 - 0.1*1 = 0.0
    assert effective_scores([1.0, 0.8, 0.1], [10, 2, 1], 0.1) == pytest.approx([0.0, 0.6, 0.0])
    c = choose_pair([1.0, 0.8, 0.5], [10, 2, 1], ["long", "mid", "short"], length_penalty=0.1)
    assert (c.best, c.worst) == (1, 0)


def test_identical_texts_form_no_pair():
    assert choose_pair([1.0, 0.0], [1, 1], ["same", "same"]).status == "best and worst texts are identical"


def test_single_candidate():
    assert choose_pair([1.0], [1], ["a"]).status == "fewer than 2 candidates"


def test_rows_follow_trl_conventions():
    texts, scores = ["good", "bad"], [2.0, -1.0]
    c = choose_pair(scores, [1, 1], texts)
    msgs = [{"role": "user", "content": "q"}]
    pair = dpo_pair("p1", "q", msgs, texts, scores, c)
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == ("q", "good", "bad")
    assert pair["score_chosen"] >= pair["score_rejected"]
    kto = kto_examples("p1", "q", msgs, texts, scores, c)
    assert [(k["completion"], k["label"]) for k in kto] == [("good", True), ("bad", False)]

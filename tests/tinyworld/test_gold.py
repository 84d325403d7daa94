"""The tiny world's gold preference on hand-computed values: topic, coverage, repetition, length, non-words;
its noisy labels; the gold win rate."""

import math
import random

import pytest

from prefloop.tinyworld import gold as G

GOOD = "The honey matters more than the hive. Watch the queen closely. Learn about pollen, nectar and swarm."


def test_a_varied_on_topic_answer_of_moderate_length_scores_one():
    # 17 words, 6 distinct bee words, all topic words about bees, no sentence repeated.
    assert G.gold_score("Explain bees.", GOOD) == pytest.approx(1.0)


@pytest.mark.parametrize("prompt, answer, expected", [
    # on topic, 2 of 6 topic words, 6 words (4 short of 10): 0.5 + 0.5 * 2/6 - 0.12
    ("Explain bees.", "Think of honey and hive together.", 0.5 + 1 / 6 - 0.12),
    # off topic: no relevance, no coverage, same length penalty
    ("Explain bees.", "Think of lava and ash together.", -0.12),
    # half the topic words on topic: 0.5 * 0.5 + 0.5 * 2/6, 8 words
    ("Explain bees.", "Think of honey and hive. Lava and ash.", 0.25 + 1 / 6 - 0.06),
    # a compare prompt names two topics; words of either count
    ("Compare cats and dogs.", "Think of kitten and puppy together.", 0.5 + 1 / 6 - 0.12),
    # a prompt that names no topic earns nothing for topic words
    ("Hello there.", "Think of honey and hive together.", -0.12),
    # one sentence of three repeats: 15 words, 3 distinct bee words: 0.5 + 0.25 - 1/3
    ("Explain bees.", "Watch the queen closely. Watch the queen closely. The honey matters more than the hive.",
     0.5 + 0.25 - 1 / 3),
    # 40 words, 10 past 30: 0.5 + 0.5 * 1/6 - 0.3; and the cap of 0.6 at 100 words
    ("Explain bees.", " ".join(["honey"] * 40), 0.5 + 1 / 12 - 0.3),
    ("Explain bees.", " ".join(["honey"] * 100), 0.5 + 1 / 12 - 0.6),
    # half the words are not words of the world: 4 words, 2 bee words
    ("Explain bees.", "Honey hive xqz wub.", 0.5 + 1 / 6 - 0.18 - 0.5),
    ("Explain bees.", "", -0.3),  # empty: only the length penalty (10 words short)
])
def test_gold_values_match_the_docstring(prompt, answer, expected):
    assert G.gold_score(prompt, answer) == pytest.approx(expected)


@pytest.mark.parametrize("better, worse", [
    (GOOD, "By the way, the lava matters more than the ash. Watch the crater closely. Learn about magma, vent and "
           "summit."),                                                                   # drifting
    (GOOD, "The honey matters more than the hive. The honey matters more than the hive. Watch the queen closely."),
    (GOOD, "The honey matters more than the hive."),                                     # too short, one thing said
    (GOOD, GOOD + " " + GOOD.replace("honey", "beekeeper")),                             # 34 words, and repeats
])
def test_gold_prefers_on_topic_varied_unrepeated_moderate_answers(better, worse):
    assert G.gold_score("Explain bees.", better) > G.gold_score("Explain bees.", worse)


def test_repetition_counts_sentences_said_again():
    assert G.repetition("Sure. sure! The honey matters. Sure.") == pytest.approx(2 / 4)  # case and mark ignored
    assert G.repetition(GOOD) == 0.0 and G.repetition("") == 0.0
    assert G.sentences_of("Watch the queen closely.  Learn, about: it!") == ["watch the queen closely",
                                                                            "learn about it"]


def test_noisy_labels_flip_close_pairs_as_bradley_terry_says():
    rng = random.Random(0)
    a, b = "Think of honey and hive together.", "Think of honey and lava together."
    gap = (0.5 + 1 / 6 - 0.12) - (0.25 + 1 / 12 - 0.12)  # b: half its topic words drift, 1 bee word
    assert G.gold_score("Explain bees.", a) - G.gold_score("Explain bees.", b) == pytest.approx(gap)
    labels = [G.noisy_order(rng, "Explain bees.", a, b) for _ in range(4000)]
    flipped = sum(first == b for first, _, _ in labels) / len(labels)
    assert flipped == pytest.approx(1 / (1 + math.exp(gap / G.LABEL_TEMPERATURE)), abs=0.015)  # 0.034
    assert all(g == pytest.approx(-gap if first == b else gap) for first, _, g in labels)


def test_gold_win_rate_counts_ties_half():
    prompts = ["Explain bees."] * 4
    base = ["Think of honey and hive together."] * 4
    answers = [GOOD, base[0], "Think of lava and ash together.", GOOD]  # win, tie, loss, win
    assert G.win_rate(prompts, answers, base) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_grade_run_reads_a_run_directory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prefloop.tinyworld.grade import grade_run

    def write(path, answers):
        path.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([{"prompt_id": f"p{i}", "prompt": "Explain bees.", "answer": a}
                                             for i, a in enumerate(answers)]), path)

    base = ["Think of honey and hive together."] * 2
    write(tmp_path / "round_0" / "base_answers" / "answers.parquet", base)
    write(tmp_path / "round_0" / "eval" / "answers.parquet", [GOOD, base[0]])  # a win and a tie
    write(tmp_path / "round_1" / "eval" / "answers.parquet", [GOOD + " " + GOOD, GOOD])  # a loss, a win
    rows = grade_run(tmp_path)
    assert [r["round"] for r in rows] == ["base", 0, 1]
    assert rows[1]["gold_win_rate"] == 0.75 and rows[2]["gold_win_rate"] == 0.5
    assert rows[0]["repetition_rate"] == 0.0 and rows[2]["repetition_rate"] == 0.25  # (3/6 + 0) / 2

"""The demo world: its topics, the answers the tiny policy is pre-trained on, and the shipped prompt files
(the gold preference is tested in test_gold.py)."""

import json
import random
import re

from prefloop.tinyworld import topics as T
from prefloop.tinyworld.gold import gold_score


def test_world_has_forty_topics_with_distinct_words():
    assert len(T.TOPICS) >= 40
    words = [w for name, vocab in T.TOPICS.items() for w in (name, *vocab)]
    assert len(words) == len(set(words)), "a word belongs to two topics"
    assert all(len(vocab) >= 6 for vocab in T.TOPICS.values())
    fillers = {w for text in T.SENTENCES + T.OPENERS + T.DIGRESSIONS + T.FORMS for w in T.words_of(text)}
    assert not fillers & set(words), "a template word is also a topic word"


def test_garbled_text_is_made_of_non_words():
    text = "Think of honey and hive together."
    garbled = T.garble(random.Random(0), text, 1.0)
    assert garbled.endswith(".") and len(garbled.split()) == len(text.split())
    assert sum(w not in T.LEXICON for w in T.words_of(garbled)) >= 4


def test_preference_range_and_answer_variety():
    rng = random.Random(0)
    scores = []
    for _ in range(500):
        prompt, names = T.make_prompt(rng)
        scores.append(gold_score(prompt, T.make_answer(rng, names, noise=0.3)))
    assert all(-2.4 <= s <= 1.0 for s in scores)
    # The answers the policy is pre-trained on must vary on what is judged, or DPO has nothing to learn.
    assert sum(s >= 0.8 for s in scores) > 50 and sum(s <= 0.2 for s in scores) > 50


def test_repeat_answer_says_one_sentence_twice():
    answer = "The honey matters more than the hive. Watch the queen closely."
    for seed in range(5):
        out = T.repeat_answer(random.Random(seed), answer)
        sentences = out.split(". ")
        assert len(sentences) == 3 and len(set(s.rstrip(".") for s in sentences)) == 2


def test_drift_is_announced_and_generation_is_deterministic():
    a = T.make_answer(random.Random(3), ["bees"], on_topic=0.0, n_sentences=3)
    assert a == T.make_answer(random.Random(3), ["bees"], on_topic=0.0, n_sentences=3)
    sentences = [s for s in a.split(". ") if s]
    assert sum(any(s.startswith(d) for d in T.DIGRESSIONS) for s in sentences) == 3
    assert gold_score("Explain bees.", a) <= 0.0  # all off topic


def read_jsonl(path):
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        assert set(row) == {"prompt_id", "prompt", "topics"}, f"{path}:{i}"
        assert isinstance(row["prompt"], str) and row["prompt"].strip(), f"{path}:{i}"
        rows.append(row)
    return rows


def test_shipped_prompt_files():
    train, heldout = read_jsonl(T.PROMPTS_FILE), read_jsonl(T.HELDOUT_FILE)
    assert len(train) >= 300 and 50 <= len(heldout) <= 100
    ids = [r["prompt_id"] for r in train + heldout]
    assert len(ids) == len(set(ids))
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    for row in train + heldout:
        assert T.prompt_topics(row["prompt"]) == set(row["topics"])
    # Varied: most instruction forms and every topic appear in the train split.
    patterns = {f: re.compile(re.escape(f).replace(r"\{t\}", r"\w+").replace(r"\{u\}", r"\w+") + "$")
                for f in T.FORMS}
    forms = {f for f, pat in patterns.items() for r in train if pat.match(r["prompt"])}
    assert len(forms) == len(T.FORMS) >= 12
    assert {t for r in train for t in r["topics"]} == set(T.TOPICS)


def test_shipped_files_are_what_write_prompt_files_writes(tmp_path):
    train, heldout = T.write_prompt_files(tmp_path)
    assert train.read_text() == T.PROMPTS_FILE.read_text()
    assert heldout.read_text() == T.HELDOUT_FILE.read_text()


def test_prompt_files_read_cleanly_with_the_project_reader():
    from prefloop.core.prompts import read_prompts

    for path in (T.PROMPTS_FILE, T.HELDOUT_FILE):
        result = read_prompts(path)
        assert result.rejected == [] and len(result.accepted) == len(path.read_text().splitlines())

"""A small copy of the Snorkel-Mistral-PairRM-DPO dataset in its real schema and split names, made from the tiny
world (``tinyworld/topics.py``), and its partitions as ``prefloop data prepare snorkel-pairs`` builds them, shipped for
the ``--tiny`` runs of the Snorkel and Contextual KTO recipes (3 rounds, one disjoint partition each).

Each ``train_iteration_<n>`` split holds 32 different tiny-world training prompts; every row has 5 sampled
answers (``all_generated_responses``), their scores under the tiny world's documented preference
(``all_rm_scores``, standing in for PairRM's) and the best / worst as the chosen / rejected conversations, as
on the card. ``test_iteration_<n>`` holds 4 more prompts each (not used by the recipes).

    python -m prefloop.app.data.tiny_snorkel    # rewrites tinyworld/data/snorkel_tiny/ and snorkel_tiny_prepared/
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from prefloop.tinyworld.gold import gold_score as preference_score
from prefloop.tinyworld.topics import DATA_DIR, make_answer, prompt_splits

SNORKEL_TINY = DATA_DIR / "snorkel_tiny"
SNORKEL_TINY_PREPARED = DATA_DIR / "snorkel_tiny_prepared"
PER_ITERATION, PER_TEST, ITERATIONS = 32, 4, 3


def _row(rng: random.Random, rec: dict) -> dict:
    answers = [make_answer(rng, rec["topics"]) for _ in range(5)]
    scores = [round(preference_score(rec["prompt"], a), 6) for a in answers]
    best, worst = max(range(5), key=lambda i: scores[i]), min(range(5), key=lambda i: scores[i])
    if scores[best] == scores[worst]:  # all five equal: no preference, as PairRM ties would give
        answers[worst] = make_answer(rng, rec["topics"], on_topic=0.0, n_sentences=4)
        scores[worst] = round(preference_score(rec["prompt"], answers[worst]), 6)
    user = {"role": "user", "content": rec["prompt"]}
    return {"prompt_id": rec["prompt_id"], "prompt": rec["prompt"],
            "chosen": [user, {"role": "assistant", "content": answers[best]}],
            "rejected": [user, {"role": "assistant", "content": answers[worst]}],
            "all_generated_responses": answers, "all_rm_scores": scores}


def snorkel_tiny_splits(seed: int = 0) -> dict[str, list[dict]]:
    """The card's split names, each with rows in the card's columns."""
    rng = random.Random(seed)
    train, _ = prompt_splits(seed)
    splits, at = {}, 0
    for it in range(1, ITERATIONS + 1):
        splits[f"train_iteration_{it}"] = [_row(rng, r) for r in train[at:at + PER_ITERATION]]
        at += PER_ITERATION
    for it in range(1, ITERATIONS + 1):
        splits[f"test_iteration_{it}"] = [_row(rng, r) for r in train[at:at + PER_TEST]]
        at += PER_TEST
    return splits


def write_snorkel_tiny(directory: Path = SNORKEL_TINY, seed: int = 0) -> Path:
    """The hub's data-file layout: ``data/<split>-00000-of-00001.jsonl``."""
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "data").mkdir(parents=True)
    for split, rows in snorkel_tiny_splits(seed).items():
        with open(directory / "data" / f"{split}-00000-of-00001.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return directory

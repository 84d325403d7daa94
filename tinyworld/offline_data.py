"""A small offline preference file in the synthetic world of ``tinyworld/topics.py``, shipped for ``--tiny`` runs of
offline recipes (Archangel: SFT then KTO on ``prompt/chosen/rejected``; Contextual KTO on partitions).

Chosen answers stay on the prompt's topics and are short; rejected ones drift to another topic. Both are
checked against the world's gold preference, ``gold.gold_score``.

    python -m prefloop.tinyworld.offline_data     # rewrites tinyworld/data/tiny_prefs.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from prefloop.tinyworld.gold import gold_score
from prefloop.tinyworld.topics import DATA_DIR, make_answer, prompt_splits

TINY_PREFS = DATA_DIR / "tiny_prefs.jsonl"


def tiny_preferences(n: int = 64, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    train, _ = prompt_splits(seed)
    rows = []
    for rec in train[:n]:
        chosen = make_answer(rng, rec["topics"], on_topic=1.0, n_sentences=rng.randint(1, 2))
        rejected = make_answer(rng, rec["topics"], on_topic=0.0, n_sentences=rng.randint(1, 3))
        if gold_score(rec["prompt"], chosen) <= gold_score(rec["prompt"], rejected):
            continue  # the file only holds pairs the gold preference agrees with
        rows.append({"prompt_id": rec["prompt_id"], "prompt": rec["prompt"], "chosen": chosen, "rejected": rejected})
    return rows


def write_tiny_preferences(path: Path = TINY_PREFS, n: int = 64, seed: int = 0) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for row in tiny_preferences(n, seed):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


if __name__ == "__main__":
    print(write_tiny_preferences())

"""Per-round prompt partitions: the pure hash split, the recipe's checks, and the rollout's reading of a round."""

import json
import random

import pytest

from prefloop.core.config import RecipeError, parse_recipe
from prefloop.core.partition import RoundPart, partition_of, round_path, select_first, split, take


def ids(n):
    return [{"prompt_id": f"p{i}"} for i in range(n)]


def test_split_is_disjoint_covering_and_independent_of_order():
    rows = ids(300)
    parts = split(rows, 3, seed=7)
    assert sorted(r["prompt_id"] for p in parts for r in p) == sorted(r["prompt_id"] for r in rows)
    assert all(60 < len(p) < 140 for p in parts)  # a hash, not a dump into one bucket
    shuffled = list(rows)
    random.Random(0).shuffle(shuffled)
    assert [sorted(r["prompt_id"] for r in p) for p in split(shuffled, 3, seed=7)] == \
        [sorted(r["prompt_id"] for r in p) for p in parts]
    assert take(rows, 3, 1, seed=7) == parts[1]
    assert split(rows, 3, seed=8) != parts


def test_partition_of_is_a_fixed_function_of_key_and_seed():
    # sha256(b"0\x00p0")[:8] as a big-endian integer, mod 3 (computed once, by hand, with hashlib)
    import hashlib
    expected = int.from_bytes(hashlib.sha256(b"0\x00p0").digest()[:8], "big") % 3
    assert partition_of("p0", 3, 0) == expected
    with pytest.raises(ValueError):
        partition_of("p0", 0)
    with pytest.raises(ValueError, match="partition 3 does not exist"):
        take(ids(3), 3, 3)


def test_select_first_is_order_independent():
    rows = ids(50)
    chosen, rest = select_first(rows, 10, seed=1)
    assert len(chosen) == 10 and len(rest) == 40
    again, _ = select_first(list(reversed(rows)), 10, seed=1)
    assert sorted(r["prompt_id"] for r in again) == sorted(r["prompt_id"] for r in chosen)
    assert select_first(rows, None)[0] == rows


class Data:
    def __init__(self, **kw):
        self.partitions, self.partition_seed, self.round_offset, self.reuse_prompts = None, 0, 0, False
        self.__dict__.update(kw)


def test_round_part_fills_round_with_the_offset_and_takes_one_partition():
    assert round_path("/d/train_iteration_{round}.parquet", 0, 1) == "/d/train_iteration_1.parquet"
    part = RoundPart(Data(round_offset=1), "/d/prompts-{round}.parquet", 2)
    assert part.path == "/d/prompts-3.parquet" and part.number == 3 and part.k is None
    rows = ids(90)
    seen = [RoundPart(Data(partitions=3, partition_seed=4), "/d/all.jsonl", r).select(rows, lambda x: x["prompt_id"])
            for r in range(3)]
    assert sum(len(s) for s in seen) == 90
    assert not ({x["prompt_id"] for x in seen[0]} & {x["prompt_id"] for x in seen[1]})
    assert seen == split(rows, 3, seed=4)
    assert RoundPart(Data(partitions=3, reuse_prompts=True), "x", 4).number == 1  # cycling, when allowed
    eval_part = RoundPart(Data(partitions=3), "/d/heldout.jsonl", None)  # evaluation reads everything
    assert eval_part.select(rows, lambda x: x["prompt_id"]) == rows and eval_part.describe(90)["partition"] is None


def recipe(**data):
    raw = {"name": "t", "run_dir": "/tmp/r", "policy": {"model": "m"}, "data": {"train": "p.jsonl", **data},
           "scorer": {"kind": "function", "function": "a:b"}, "train": {}, "loop": {"rounds": 3}}
    return parse_recipe(raw, "r.yaml")


def test_recipe_checks_that_rounds_read_their_own_prompts():
    with pytest.raises(RecipeError, match="every online round would read the same prompts"):
        recipe().check_round_prompts()
    recipe(train="p-{round}.jsonl").check_round_prompts()
    recipe(partitions=3).check_round_prompts()
    recipe(reuse_prompts=True).check_round_prompts()
    with pytest.raises(RecipeError, match="data.partitions = 3 is too few"):
        recipe(partitions=3, round_offset=1)
    with pytest.raises(RecipeError, match="choose one way"):
        recipe(train="p-{round}.jsonl", partitions=3)
    with pytest.raises(RecipeError, match="data.round_offset"):
        recipe(round_offset=-1)


def test_rollout_reads_only_its_rounds_partition(tmp_path, tiny_assets):
    from transformers import AutoTokenizer

    from prefloop.app.rounds.rollout import prepare_prompts
    from prefloop.core.config import parse_recipe

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_id": f"q{i}", "prompt": f"Tell me about bees {i}."}) + "\n"
                               for i in range(30)))
    r = parse_recipe({"name": "t", "run_dir": str(tmp_path / "run"), "policy": {"model": "m"},
                      "data": {"train": str(prompts), "partitions": 3, "partition_seed": 2, "max_prompt_tokens": 64},
                      "rollout": {"max_tokens": 8, "max_model_len": 128},
                      "scorer": {"kind": "function", "function": "a:b"}, "train": {}, "loop": {"rounds": 3}}, "t")
    tok = AutoTokenizer.from_pretrained(tiny_assets.policy)
    got = [prepare_prompts(r, str(prompts), tok, round_idx) for round_idx in range(3)]
    per_round = [{row["prompt_id"] for row in g.rows} for g in got]
    assert sum(len(s) for s in per_round) == 30 and len(set().union(*per_round)) == 30
    assert per_round == [{x["prompt_id"] for x in p} for p in split(ids_q(30), 3, seed=2)]
    assert got[1].partition["partition"] == 1 and got[1].partition["partitions"] == 3
    assert got[1].partition["prompts_in_partition"] == len(per_round[1])


def ids_q(n):
    return [{"prompt_id": f"q{i}"} for i in range(n)]


"""The shipped tiny Snorkel copy (card's schema and split names) and its prepared partitions, which the --tiny
runs of the Snorkel and Contextual KTO recipes read: the partitions are what `prefloop data prepare` makes of
the copy today, disjoint, and made of the tiny world's training prompts."""

import json

import pyarrow.parquet as pq

from prefloop.app.data.tiny_snorkel import prepare_snorkel_tiny
from prefloop.app.front.recipes import DATA_DIR, resolve_recipe
from prefloop.core.train_data import read_train_rows
from prefloop.tinyworld.tiny_cards import SNORKEL_TINY, SNORKEL_TINY_PREPARED

RECIPES = DATA_DIR.parent.parent / "recipes"
DROP = ("source_row",)


def rows(path):
    return [{k: v for k, v in r.items() if k not in DROP} for r in pq.read_table(path).to_pylist()]


def test_shipped_partitions_are_a_fresh_prepare_of_the_shipped_copy(tmp_path):
    fresh = prepare_snorkel_tiny(SNORKEL_TINY, tmp_path / "prepared")
    shipped = json.loads((SNORKEL_TINY_PREPARED / "manifest.json").read_text())
    assert fresh["counts"] == shipped["counts"] and fresh["sources"] == shipped["sources"]
    for name in ("prompts", "prefs", "kto"):
        for i in range(3):
            assert rows(tmp_path / "prepared" / f"{name}-{i}.parquet") == rows(SNORKEL_TINY_PREPARED / f"{name}-{i}.parquet")


def test_three_disjoint_partitions_of_tiny_world_training_prompts():
    train_ids = {json.loads(line)["prompt_id"] for line in (DATA_DIR / "prompts.jsonl").read_text().splitlines()}
    heldout = {json.loads(line)["prompt"] for line in (DATA_DIR / "heldout.jsonl").read_text().splitlines()}
    parts = [{r["prompt_id"] for r in rows(SNORKEL_TINY_PREPARED / f"prompts-{i}.parquet")} for i in range(3)]
    assert [len(p) for p in parts] == [32, 32, 32] and len(set().union(*parts)) == 96 and parts[0] <= train_ids
    prompts = {r["prompt"] for i in range(3) for r in rows(SNORKEL_TINY_PREPARED / f"prompts-{i}.parquet")}
    assert not prompts & heldout
    kto = read_train_rows(SNORKEL_TINY_PREPARED / "kto-1.parquet")
    assert kto.kind == "kto" and not kto.rejected and {r["prompt_id"] for r in kto.accepted} == parts[1]


def test_tiny_recipes_read_one_partition_per_round(tmp_path):
    for name, field in (("snorkel-pairrm-dpo.yaml", "data.train"), ("contextual-kto-pairrm.yaml", "train.data")):
        recipe = resolve_recipe(str(RECIPES / name), [f"run_dir={tmp_path / name}"], tiny=True)
        path = recipe.data.train if field == "data.train" else recipe.train.data
        assert "{round}" in path and recipe.loop.rounds == 3
        for r in range(3):
            assert (SNORKEL_TINY_PREPARED / path.rsplit("/", 1)[1].replace("{round}", str(r))).is_file()
        recipe.check_round_prompts()

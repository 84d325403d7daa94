"""Two named eval sets through the round loop on real components (the Archangel recipe's ``--tiny`` switch, one
SFT round): the main held-out set judged against the base model as before, and a second set judged against its
file's reference outputs by its own judge, with its own figures in the manifest and the report."""

import json

import pyarrow.parquet as pq
import pytest

from prefloop.app.front.recipes import resolve_recipe
from prefloop.app.rounds.loop import run_loop
from prefloop.core.eval_metrics import preference
from prefloop.tinyworld.gold import gold_score
from prefloop.tinyworld.topics import HELDOUT_FILE
from tests.paths import RECIPES

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_second_eval_set_with_its_own_judge_and_baseline(tmp_path, tiny_assets, monkeypatch, graded_by_gold):
    monkeypatch.setenv("PREFLOOP_ASSETS", str(tiny_assets.root))
    rows = [json.loads(line) for line in HELDOUT_FILE.read_text().splitlines()[:6]]
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"prompt_id": f"ref-{r['prompt_id']}", "prompt": r["prompt"],
                                        "reference_output": f"Reference answer {i}."}) + "\n"
                            for i, r in enumerate(rows)))
    sets = {"refs": {"data": str(refs), "baseline": "reference", "limit": 5,
                     "judge": {"kind": "function", "function": "prefloop.tinyworld.gold:gold_score"}}}
    recipe = resolve_recipe(str(RECIPES / "archangel-sft-kto.yaml"),
                            [f"run_dir={tmp_path / 'run'}", "loop.rounds=1", "loop.methods=[sft]",
                             f"eval.sets={json.dumps(sets)}"], tiny=True)
    [m] = run_loop(recipe)
    run = tmp_path / "run"
    graded_by_gold(run, m)  # the main set, as before
    assert m["baseline"] == "base" and m["n"] == 12
    s = m["eval_sets"]["refs"]
    assert (s["baseline"], s["judge"], s["n"], s["eval_prompts"]["used"]) == ("reference", "function", 5, 5)
    table = pq.read_table(run / "round_0" / "eval" / "sets" / "refs" / "answers.parquet").to_pylist()
    assert [r["base_answer"] for r in table] == [f"Reference answer {i}." for i in range(5)]
    gold = [preference(gold_score(r["prompt"], r["answer"]), gold_score(r["prompt"], r["base_answer"])) for r in table]
    assert s["win_rate"] == pytest.approx(sum(gold) / len(gold))  # the set's own judge, recomputed here
    base = json.loads((run / "round_0" / "base_answers-refs" / "manifest.json").read_text())
    assert base["baseline"] == "reference" and base["prompts"] == 5
    report = (run / "report.md").read_text()
    assert "## Eval sets" in report and "| refs | function | reference | 5 |" in report

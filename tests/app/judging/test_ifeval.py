"""The ifeval judge (core/ifeval.py, actors/ifeval_scorer.py, app/judging/ifeval_judge.py): IFEval's own checkers,
the ids that cannot run here refused with the reason, the table read strictly, the four figures."""

from __future__ import annotations

import json

import pytest

from prefloop.core import ifeval
from prefloop.core.config import RecipeError, load_recipe

PUNKT = ("change_case:capital_word_frequency", "length_constraints:number_sentences")


def test_probe_runs_the_registry_and_names_why_an_id_cannot_run():
    probed = ifeval.probe_ids()
    assert len(probed) == 25
    for iid in PUNKT:
        assert "nltk data 'punkt'" in probed[iid]
    assert len(ifeval.runnable_ids()) == 23
    assert "combination:repeat_prompt" in ifeval.runnable_ids()


def test_check_ids_refuses_unknown_and_unrunnable_ids():
    assert ifeval.check_ids(["punctuation:no_comma"], "x") == ["punctuation:no_comma"]
    with pytest.raises(ValueError, match="cannot be graded here: .*punkt"):
        ifeval.check_ids([PUNKT[1]], "scorer.instruction_ids")
    with pytest.raises(ValueError, match="not an IFEval instruction id"):
        ifeval.check_ids(["keywords:nope"], "scorer.instruction_ids")


def _inst(*pairs):
    return ifeval.Instructions(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))


def test_grade_is_if_verifiables_strict_and_loose():
    inst = _inst(("change_case:english_lowercase", {}), ("punctuation:no_comma", {}),
                 ("startend:end_checker", {"end_phrase": "Any other questions?"}))
    good = ifeval.grade("p", "all lowercase and no commas here any other questions?", inst)
    assert good.strict == (True, True, True) and good.reward == 1.0
    bad = ifeval.grade("p", "Hello, World", inst)
    assert bad.strict == (False, False, False) and bad.reward == 0.0
    # loose drops the first line: a markdown heading no longer breaks "all lowercase"
    loose = ifeval.grade("p", "# Title\nall lowercase any other questions?", inst)
    assert loose.strict[0] is False and loose.loose[0] is True
    assert ifeval.grade("p", "", inst).strict == (False, False, False)


def test_figures_and_per_id():
    a = ifeval.Grade(("x", "y"), (True, False), (True, True))
    b = ifeval.Grade(("x",), (True,), (True,))
    f = ifeval.figures([a, b], "base_")
    assert f == {"base_ifeval_prompt_strict": 0.5, "base_ifeval_prompt_loose": 1.0,
                 "base_ifeval_instruction_strict": 2 / 3, "base_ifeval_instruction_loose": 1.0}
    assert ifeval.per_id([a, b]) == {"x": {"n": 2, "strict": 1.0}, "y": {"n": 1, "strict": 0.0}}


def _table(tmp_path, rows):
    path = tmp_path / "instructions.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, match", [
    ({"prompt_id": "a", "instruction_id_list": [], "kwargs": []}, "line 2: field 'instruction_id_list'"),
    ({"prompt_id": "a", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}, "line 2: field 'kwargs'"),
    ({"prompt_id": "a", "instruction_id_list": [PUNKT[0]], "kwargs": [{}]}, "line 2: .*punkt"),
    ({"prompt_id": "ok", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}, "line 2: .*twice"),
    ("{not json", "line 2: not JSON"),
])
def test_table_errors_name_file_line_and_field(tmp_path, row, match):
    ok = {"prompt_id": "ok", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    path = _table(tmp_path, [ok, row])
    with pytest.raises(ValueError, match=f"instructions.jsonl: {match}"):
        ifeval.read_instructions(path, ifeval.runnable_ids())


def test_scorer_scores_candidates_and_refuses_an_unknown_prompt(tmp_path):
    from prefloop.actors.ifeval_scorer import IFEvalScorer

    path = _table(tmp_path, [{"prompt_id": "p1", "instruction_id_list": ["punctuation:no_comma",
                                                                          "startend:quotation"],
                              "kwargs": [{}, {"keyword": None}]}])
    scorer = IFEvalScorer(str(path))
    out = scorer({"prompt_id": ["p1"], "prompt": ["x"], "candidates": [['"no comma here"', '"a, b"', "a b"]]})
    assert out.column("scores").to_pylist() == [[1.0, 0.5, 0.5]]
    with pytest.raises(KeyError, match="'p2' is not in the instruction table"):
        scorer({"prompt_id": ["p2"], "prompt": ["x"], "candidates": [["a", "b"]]})


def test_recipe_refuses_an_id_that_cannot_run_here():
    with pytest.raises(RecipeError, match="number_sentences' cannot be graded here: its checker needs nltk"):
        load_recipe("recipes/smollm2-ifeval.yaml", ["scorer.instruction_ids=[length_constraints:number_sentences]"],
                    {"data": "/d", "smollm2": "/m"})
    with pytest.raises(RecipeError, match="scorer.instructions is required"):
        load_recipe("recipes/smollm2-ifeval.yaml", ["scorer.instructions=null"], {"data": "/d", "smollm2": "/m"})


def test_eval_judge_figures_and_report_tables():
    from prefloop.app.judging.ifeval_judge import manifest_figures, report_tables

    verdicts = [{"ids": ["x", "y"], "strict": [True, True], "loose": [True, True],
                 "base_strict": [False, True], "base_loose": [True, True]},
                {"ids": ["x"], "strict": [False], "loose": [True], "base_strict": [False], "base_loose": [False]}]
    m = manifest_figures(verdicts)
    assert m["ifeval_prompt_strict"] == 0.5 and m["base_ifeval_prompt_strict"] == 0.0
    assert m["ifeval_instruction_strict"] == 2 / 3 and m["base_ifeval_instruction_loose"] == 2 / 3
    assert m["ifeval_per_id"]["x"] == {"n": 2, "strict": 0.5, "base_strict": 0.0}
    text = "\n".join(report_tables([{**m, "round": 0, "mean_length": 40.0, "base_mean_length": 50.0}]))
    assert "| base | 0.000 |" in text and "| round 0 | 0.500 |" in text and "| `x` | 2 | 0.00 | 0.50 |" in text
    assert report_tables([{"round": 0}]) == []

"""The preflight (app/front/preflight.py): each check finds its problem on the demo recipe with one thing broken,
names the key and the path; `recipe check` and `run` both stop on it with exit 1 before Ray is imported."""

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli_mistakes import DEMO, prefloop

from prefloop.app.front.preflight import preflight
from prefloop.core.config import load_recipe
from prefloop.tinyworld.assets import default_assets_dir
from prefloop.tinyworld.topics import DATA_DIR
from tests.paths import ROOT

ASSETS = default_assets_dir()
# the demo's tiny policy and PairRM, built into ASSETS once per session (tests/conftest.py), never skipped
needs_assets = pytest.mark.usefixtures("tiny_assets")


def demo(*sets: str, recipe: str = DEMO, tiny: bool = False):
    return load_recipe(recipe, list(sets), {"assets": str(ASSETS), "data": str(DATA_DIR)}, tiny=tiny)


@pytest.fixture
def broken(tmp_path):
    """Model directories and data files with one thing wrong each."""
    (tmp_path / "empty_dir").mkdir()
    bad = tmp_path / "bad_config"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        if (ASSETS / "policy" / name).is_file():
            shutil.copy(ASSETS / "policy" / name, no_tok / name)
    (tmp_path / "empty.jsonl").write_text("")
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "no_prompt_column.parquet")
    return tmp_path


CASES = [  # (what, --set overrides ({t}: the broken fixture), words of the problem)
    ("data.train per round", ["data.train=/nope/p-{round}.jsonl", "data.reuse_prompts=false"],
     ["data.train (round 0): /nope/p-0.jsonl", "data.train (round 2): /nope/p-2.jsonl"]),
    ("data.eval", ["data.eval=/nope/e.jsonl"], ["data.eval: /nope/e.jsonl: prompt file not found"]),
    ("an empty prompt file", ["data.train={t}/empty.jsonl"], ["empty.jsonl: empty file"]),
    ("a Parquet without the prompt column", ["data.train={t}/no_prompt_column.parquet"],
     ["no 'prompt' or 'messages' column"]),
    ("train.data per round", ["train.data=/nope/prefs-{round}.parquet"], ["train.data (round 1): /nope/prefs-1"]),
    ("policy without config.json", ["policy.model={t}/empty_dir"], ["policy.model", "no config.json"]),
    ("policy with a broken config.json", ["policy.model={t}/bad_config"], ["config.json: does not load"]),
    ("policy without a tokenizer", ["policy.model={t}/no_tokenizer"], ["no_tokenizer: no tokenizer"]),
    ("PairRM ranker dir", ["scorer.model=/nope/pairrm"], ["scorer.model: PairRM ranker dir /nope/pairrm"]),
    ("reward model dir", ["scorer.kind=reward_model", "scorer.model={t}/empty_dir"],
     ["scorer.model", "no config.json"]),
    ("scorer function import", ["scorer.kind=function", "scorer.function=nosuchmodule:fn", "scorer.model=null"],
     ["scorer.function: 'nosuchmodule:fn' cannot be imported"]),
    ("eval judge not callable", ["eval.judge.function=prefloop.tinyworld.gold:__doc__"],
     ["eval.judge.function", "is not callable"]),
    ("llm judge URL and key", ["eval.judge={kind: llm_judge, base_url: judge:8000, model_name: m, "
                               "api_key_env: PREFLOOP_TEST_UNSET_KEY}"],
     ["eval.judge.base_url 'judge:8000'", "PREFLOOP_TEST_UNSET_KEY is not set"]),
    ("rounds reading the same prompts", ["data.reuse_prompts=false"], ["every online round would read the same"]),
    ("unknown run_dir scheme", ["run_dir=foo://bucket/run"], ["unknown URI scheme 'foo'"]),
]


@needs_assets
def test_the_demo_recipe_passes():
    assert preflight(demo(), "run", assets_dir=ASSETS) == []


@needs_assets
@pytest.mark.parametrize("what,sets,words", CASES, ids=[c[0] for c in CASES])
def test_each_check_finds_its_problem(broken, what, sets, words):
    problems = preflight(demo(*[s.replace("{t}", str(broken)) for s in sets]), "run", assets_dir=ASSETS)
    text = "\n".join(problems)
    assert problems and all(w in text for w in words), (what, problems)  # the unbroken demo has none


def test_every_judge_kind_has_a_check():
    from typing import get_args

    from prefloop.core.judge_config import JudgeConfig
    from prefloop.core.judges import JUDGE_KINDS

    assert set(JUDGE_KINDS) == set(get_args(JudgeConfig.model_fields["kind"].annotation))


def test_the_plan_is_part_of_it():
    recipe = demo(recipe=str(ROOT / "recipes" / "remax-ultrarm.yaml"))
    problems = preflight(recipe, "run", cluster=str(ROOT / "cluster" / "kuberay" / "rayservice.yaml"))
    assert any("does not fit" in p and "short by" in p for p in problems), problems


def test_one_round_commands_check_their_own_stage(tmp_path):
    recipe = demo("data.train=/nope/p-{round}.jsonl", "data.reuse_prompts=false", "data.eval=/nope/e.jsonl")
    rollout = "\n".join(preflight(recipe, "rollout", [1], assets_dir=ASSETS))
    assert "/nope/p-1.jsonl" in rollout and "/nope/p-0.jsonl" not in rollout and "data.eval" not in rollout
    assert "data.train" not in "\n".join(preflight(recipe, "train", [1], assets_dir=ASSETS))


@needs_assets
@pytest.mark.parametrize("command", [["recipe", "check"], ["run"]])
@pytest.mark.parametrize("sets,words", [
    (["data.train=/nope/p.jsonl"], "/nope/p.jsonl"),
    (["scorer.model=/nope/pairrm"], "PairRM ranker dir /nope/pairrm"),
    (["scorer.kind=function", "scorer.function=nosuchmodule:fn", "scorer.model=null"], "nosuchmodule"),
    (["data.reuse_prompts=false"], "every online round would read the same prompts"),
    (["policy.model=/nope/policy"], "policy.model /nope/policy: no such directory"),
], ids=["data file", "ranker", "function", "round prompts", "policy"])
def test_recipe_check_and_run_stop_before_ray(command, sets, words):
    args = [*command, DEMO, *[a for s in sets for a in ("--set", s)]]
    got = prefloop(*args)
    assert got.returncode == 1 and words in got.stderr, got.stderr
    assert "Traceback" not in got.stderr and "RAY WAS IMPORTED" not in got.stderr, got.stderr


@needs_assets
def test_a_one_round_command_writes_nothing_when_the_preflight_fails(tmp_path):
    """The run directory (its recipe.yaml, its lock) is not created, so the fixed command is no 'recipe change'."""
    got = prefloop("rollout", DEMO, "--set", f"run_dir={tmp_path}/run", "--set", "data.train=/nope/p.jsonl")
    assert got.returncode == 1 and "/nope/p.jsonl" in got.stderr and "RAY WAS IMPORTED" not in got.stderr
    assert not (tmp_path / "run").exists()


@needs_assets
def test_the_rollout_stage_guard_is_the_preflights_model_checks(broken):
    """``run_rollout`` / ``run_remax`` called as a library, without the command's preflight, still check the
    round's start model and the scorer, with the same checks and messages."""
    from prefloop.app.front.preflight import PreflightError
    from prefloop.app.rounds.rollout import preflight as stage_guard

    stage_guard(demo(), str(ASSETS / "policy"))  # the demo's policy and PairRM pass
    with pytest.raises(PreflightError, match="policy.model .*no_tokenizer: no tokenizer"):
        stage_guard(demo(), str(broken / "no_tokenizer"))  # the start model, not policy.model, is checked
    with pytest.raises(PreflightError, match="scorer.function: 'nosuchmodule:fn' cannot be imported"):
        stage_guard(demo("scorer.kind=function", "scorer.function=nosuchmodule:fn", "scorer.model=null"),
                    str(ASSETS / "policy"))

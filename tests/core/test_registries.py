"""The method and judge registries, the round settings and the retry loop: each fact declared once and asked for."""

from __future__ import annotations

import pytest

from prefloop.core.config import RecipeError, parse_recipe
from prefloop.core.judges import JUDGE_KINDS, SCORER_KINDS, check_judge, judge_kind, load_function
from prefloop.core.methods import METHODS, method
from prefloop.core.retry import backoff_s, retry
from prefloop.core.round_settings import EngineSettings, sampling

BASE = {"name": "t", "run_dir": "runs/t", "policy": {"model": "m"}, "data": {"train": "p-{round}.jsonl"},
        "scorer": {"kind": "function", "function": "m:f"}, "train": {"method": "dpo"}}


def recipe(**over):
    raw = {**BASE, **over}
    return parse_recipe(raw, "t.yaml")


def test_methods_declare_reference_data_and_driver():
    assert [m for m in METHODS if method(m).needs_reference] == ["dpo", "kto", "remax"]
    assert method("dpo").reads == "pairs.parquet" and method("csft").reads == "kto.parquet"
    assert method("remax").on_policy and not any(method(m).on_policy for m in ("dpo", "kto", "sft", "csft"))
    assert method("csft").control_tokens and method("csft").step == "sft"
    with pytest.raises(ValueError, match="unknown training method 'ppo'"):
        method("ppo")


def test_recipe_methods_come_from_the_registry():
    with pytest.raises(RecipeError, match="train.method"):
        recipe(train={"method": "ppo"})
    with pytest.raises(RecipeError, match="loop.methods.0"):  # an on-policy method is not a per-round method
        recipe(loop={"rounds": 1, "methods": ["remax"]})


def test_judge_kinds_declare_requirements_and_classes():
    assert set(SCORER_KINDS) == {"pairrm", "reward_model", "function", "ifeval"} and "llm_judge" in JUDGE_KINDS
    assert judge_kind("pairrm").pairwise and judge_kind("pairrm").gpu and not judge_kind("function").gpu
    assert judge_kind("llm_judge").scorer is None
    with pytest.raises(RecipeError, match="scorer.model is required when scorer.kind is 'pairrm'"):
        recipe(scorer={"kind": "pairrm"})
    with pytest.raises(RecipeError, match="eval.judge.base_url is required"):
        recipe(eval={"judge": {"kind": "llm_judge"}})
    sc = recipe(scorer={"kind": "pairrm", "model": "r", "comparisons": "pivots"}).scorer
    assert judge_kind("pairrm").kwargs(sc) == {"ranker_dir": "r", "batch_size": 16, "comparisons": "pivots"}


def test_judge_preflight_names_the_key(tmp_path, monkeypatch):
    with pytest.raises(RecipeError, match="eval.judge.function: 'no_such_mod:f' cannot be imported"):
        load_function("no_such_mod:f", "eval.judge.function")
    with pytest.raises(FileNotFoundError, match="scorer.model: PairRM ranker dir .* no config.json"):
        check_judge(recipe(scorer={"kind": "pairrm", "model": str(tmp_path)}).scorer, "scorer")
    check_judge(recipe(scorer={"kind": "function", "function": "prefloop.core.rewards:brevity"}).scorer, "scorer")


def test_sampling_per_purpose_answers_at_the_recipe_length():
    r = recipe(rollout={"num_samples": 5, "temperature": 0.9, "top_p": 0.8, "max_tokens": 48},
               loop={"rounds": 1, "eval_temperature": 0.0}, eval={"best_of": 4},
               scorer={"kind": "pairrm", "model": "r"})
    assert sampling(r, "rollout") == type(sampling(r, "rollout"))(5, 0.9, 0.8, 48, 0)
    assert (sampling(r, "eval").n, sampling(r, "eval").temperature, sampling(r, "eval").max_tokens) == (1, 0.0, 48)
    assert (sampling(r, "best_of").n, sampling(r, "best_of").max_tokens) == (4, 48)
    rx = recipe(train={"method": "remax", "max_response_len": 24, "remax": {"temperature": 0.7, "top_p": 0.9}},
                data={"train": "p.jsonl"})
    assert (sampling(rx, "remax_sample").temperature, sampling(rx, "remax_sample").max_tokens) == (0.7, 24)
    assert sampling(rx, "remax_greedy").temperature == 0.0 and sampling(rx, "remax_greedy").seed is None
    assert sampling(rx, "eval").max_tokens == 24  # ReMax is evaluated at the length it samples
    with pytest.raises(ValueError, match="not remax"):
        sampling(r, "remax_sample")


def test_engine_settings_defaults_are_the_recipe_defaults():
    r = recipe()
    assert EngineSettings.of(r) == EngineSettings()
    changed = recipe(rollout={"max_model_len": 1024, "kv_cache_gb": None}, policy={"model": "m", "dtype": "bfloat16"})
    e = EngineSettings.of(changed)
    assert (e.dtype, e.max_model_len, e.kv_cache_gb) == ("bfloat16", 1024, None)
    assert EngineSettings.from_dict(e.as_dict()) == e
    with pytest.raises(TypeError):
        EngineSettings.from_dict({**e.as_dict(), "gpu_memory_utilization": 0.5})


def test_retry_retries_transient_errors_and_gives_up_with_the_cause():
    calls, waits = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    assert retry(flaky, attempts=3, transient=(ConnectionError,), before_retry=lambda n, e: waits.append(n),
                 give_up=lambda n, e: RuntimeError(n)) == "ok"
    assert waits == [1, 2]
    with pytest.raises(RuntimeError, match="gave up after 2") as info:
        retry(lambda: (_ for _ in ()).throw(ConnectionError("x")), attempts=2, transient=(ConnectionError,),
              before_retry=lambda n, e: None, give_up=lambda n, e: RuntimeError(f"gave up after {n}"))
    assert isinstance(info.value.__cause__, ConnectionError)
    with pytest.raises(KeyError):  # not transient: no retry
        retry(lambda: {}["k"], attempts=5, transient=(ConnectionError,), before_retry=lambda n, e: 1 / 0,
              give_up=lambda n, e: RuntimeError())
    assert [backoff_s(a, 1.0, 30.0) for a in (1, 2, 3, 6, 7)] == [1.0, 2.0, 4.0, 30.0, 30.0]


def test_renamed_words_read_old_recipes_and_manifests():
    from prefloop.app.storage.rundir import upgrade_manifest

    with pytest.raises(RecipeError, match="stage_timeout_s is now wait_timeout_s"):
        recipe(resources={"stage_timeout_s": 5})
    assert recipe(resources={"wait_timeout_s": 5}).resources.wait_timeout_s == 5
    old = {"win_rate": 0.7, "judge_win_rate": 0.6, "judge_win_rate_stderr": 0.1}
    assert upgrade_manifest(old) == {"win_rate": 0.7, "scorer_win_rate": 0.6, "scorer_win_rate_stderr": 0.1}
    both = {"judge_win_rate": 0.1, "scorer_win_rate": 0.6}  # a key under its new name wins
    assert upgrade_manifest(both)["scorer_win_rate"] == 0.6

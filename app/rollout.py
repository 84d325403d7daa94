"""The rollout stage: prompts -> vLLM samples -> scores -> DPO pairs and KTO examples, for one round.

Reads top to bottom:
1. read and validate the prompts on the driver (every row accepted or rejected with a reason);
2. stream them through Ray Data: a pool of vLLM generator actors, then a pool of scorer actors;
3. check that every accepted prompt came back exactly once with N candidates;
4. select pairs (pure ``core.selection``), write Parquet files and a manifest, commit the stage atomically.

Outputs in ``RUN_DIR/round_R/rollout/``: ``candidates.parquet``, ``pairs.parquet`` (prompt/chosen/rejected),
``kto.parquet`` (prompt/completion/label), ``rejected_inputs.jsonl``, ``manifest.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefloop.actors.common import check_model_dir
from prefloop.app import console
from prefloop.app.rundir import RunDir, write_manifest
from prefloop.app.runtime import init_ray, iterate_with_timeout
from prefloop.app.tables import write_jsonl, write_parquet
from prefloop.core.config import Recipe
from prefloop.core.prompts import Fields, ReadResult, read_prompts
from prefloop.core.sampling import SampleSpec
from prefloop.core.selection import PAIRED, choose_pair, dpo_pair, kto_examples
from prefloop.core.templates import render_prompt

log = logging.getLogger(__name__)
STAGE = "rollout"


@dataclass
class PreparedPrompts:
    read: ReadResult
    rows: list[dict[str, Any]]  # what goes into Ray Data, one per used prompt
    results: list[dict[str, Any]] = field(default_factory=list)  # what came back, in input order


def prepare_prompts(recipe: Recipe, source: str, tokenizer: Any) -> PreparedPrompts:
    """Read, validate and tokenise the prompts; over-budget prompts are rejected, not truncated."""
    style, budget = recipe.policy.chat_template, recipe.data.max_prompt_tokens

    def token_ids(messages: list[dict[str, str]]) -> list[int]:
        return tokenizer(render_prompt(messages, style, tokenizer), add_special_tokens=True)["input_ids"]

    def too_long(messages: list[dict[str, str]]) -> str | None:
        n = len(token_ids(messages))
        return f"prompt is {n} tokens, over data.max_prompt_tokens={budget}" if n > budget else None

    fields = Fields(recipe.data.prompt_field, recipe.data.messages_field, recipe.data.id_field)
    read = read_prompts(source, fields, too_long)
    used = read.accepted[: recipe.data.limit] if recipe.data.limit is not None else read.accepted
    rows = [{"prompt_id": r.prompt_id, "prompt": r.prompt, "messages": json.dumps(r.messages),
             "prompt_token_ids": token_ids(r.messages)} for r in used]
    return PreparedPrompts(read, rows)


def preflight(recipe: Recipe, policy_dir: str) -> None:
    """Check every path and import on the driver, so a typo fails in a second, not inside an actor."""
    from prefloop.actors.scorers import load_function

    check_model_dir(policy_dir, "policy.model")
    sc = recipe.scorer
    if sc.kind == "pairrm" and not Path(sc.model, "config.json").is_file():
        raise FileNotFoundError(f"scorer.model {sc.model!r}: not a PairRM ranker directory (no config.json)")
    if sc.kind == "reward_model":
        check_model_dir(sc.model, "scorer.model")
    if sc.kind == "function":
        load_function(sc.function)


@dataclass
class Stage:
    """One Ray Data ``map_batches`` stage: a class, its constructor kwargs, pool size and resources."""

    cls: type
    kwargs: dict[str, Any]
    size: int
    batch_size: int
    num_cpus: float
    num_gpus: float = 0.0


def scorer_stage(recipe: Recipe) -> Stage:
    from prefloop.actors.scorers import FunctionScorer, PairRMScorer, RewardModelScorer

    sc, res = recipe.scorer, recipe.resources
    if sc.kind == "pairrm":
        cls, kwargs = PairRMScorer, {"ranker_dir": sc.model, "batch_size": sc.batch_size}
    elif sc.kind == "reward_model":
        cls, kwargs = RewardModelScorer, {"model_dir": sc.model, "chat_template": sc.chat_template,
                                          "batch_size": sc.batch_size}
    else:
        cls, kwargs = FunctionScorer, {"function": sc.function}
    gpus = res.scorer_gpus if sc.kind != "function" else 0.0
    return Stage(cls, kwargs, sc.num_scorers, sc.batch_size, res.scorer_cpus, gpus)


def sample_spec(recipe: Recipe) -> SampleSpec:
    ro = recipe.rollout
    return SampleSpec(ro.num_samples, ro.temperature, ro.top_p, ro.max_tokens, ro.seed)


def engine_kwargs(recipe: Recipe) -> dict[str, Any]:
    ro = recipe.rollout
    return dict(dtype=recipe.policy.dtype, max_model_len=ro.max_model_len, kv_cache_gb=ro.kv_cache_gb,
                enforce_eager=ro.enforce_eager, tensor_parallel_size=ro.tensor_parallel_size)


def generator_stage(recipe: Recipe, policy_dir: str, pool: Any = None, spec: SampleSpec | None = None) -> Stage:
    """A fresh vLLM actor pool, or (in the round loop) a forwarder to the long-lived ``GeneratorPool``."""
    ro, res = recipe.rollout, recipe.resources
    if pool is None:
        from prefloop.actors.generator import VLLMGenerator

        kwargs = dict(model=policy_dir, spec=spec or sample_spec(recipe), **engine_kwargs(recipe))
        return Stage(VLLMGenerator, kwargs, ro.num_generators, ro.batch_size, res.generator_cpus,
                     res.generator_gpus)
    from prefloop.actors.generator_pool import PooledGenerator

    kwargs = {"names": pool.names, "timeout_s": res.stage_timeout_s, "spec": asdict(spec) if spec else None}
    return Stage(PooledGenerator, kwargs, len(pool.names), ro.batch_size, 0.0)


def run_stages(rows: list[dict[str, Any]], stages: list[Stage], timeout_s: float, desc: str) -> list[dict]:
    """Stream rows through the stages' actor pools; return every output row (with a progress bar)."""
    import ray

    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // stages[0].batch_size))
    for st in stages:
        ds = ds.map_batches(st.cls, fn_constructor_kwargs=st.kwargs, batch_size=st.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=st.size), num_cpus=st.num_cpus,
                            num_gpus=st.num_gpus)
    rows_iter = iterate_with_timeout(ds.iter_rows(), timeout_s, desc)
    return list(console.track(rows_iter, len(rows), desc))


def generate_and_score(recipe: Recipe, policy_dir: str, rows: list[dict[str, Any]], pool: Any = None) -> list[dict]:
    """Stream rows through the generator and scorer actor pools; return one result per prompt."""
    stages = [generator_stage(recipe, policy_dir, pool), scorer_stage(recipe)]
    return run_stages(rows, stages, recipe.resources.stage_timeout_s, f"{STAGE}: prompts")


def check_complete(rows: list[dict[str, Any]], results: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Every accepted prompt back exactly once with n candidates, in input order; raise otherwise."""
    by_id: dict[str, dict[str, Any]] = {}
    for r in results:
        if r["prompt_id"] in by_id:
            raise RuntimeError(f"rollout: prompt_id {r['prompt_id']} came back twice")
        if len(r["candidates"]) != n:
            raise RuntimeError(f"rollout: prompt_id {r['prompt_id']} has {len(r['candidates'])} candidates, not {n}")
        by_id[r["prompt_id"]] = r
    missing = [row["prompt_id"] for row in rows if row["prompt_id"] not in by_id]
    if missing:
        raise RuntimeError(f"rollout: {len(missing)} prompts never came back (first: {missing[:5]})")
    return [by_id[row["prompt_id"]] for row in rows]


def select(recipe: Recipe, results: list[dict[str, Any]]) -> tuple[list, list, list]:
    """Candidates table rows (with pair_status), DPO pairs and KTO examples."""
    sel = recipe.selection
    candidates, pairs, kto = [], [], []
    for r in results:
        texts, scores, lengths = list(r["candidates"]), list(r["scores"]), list(r["num_tokens"])
        messages = json.loads(r["messages"])
        choice = choose_pair(scores, lengths, texts, tie_break=sel.tie_break, min_margin=sel.min_margin,
                             length_penalty=sel.length_penalty)
        candidates.append({
            "prompt_id": r["prompt_id"], "prompt": r["prompt"], "messages": messages,
            "candidates": texts, "scores": [float(s) for s in scores], "num_tokens": [int(n) for n in lengths],
            "finish_reasons": list(r["finish_reasons"]), "sum_logprob": [float(x) for x in r["sum_logprob"]],
            "token_logprobs": [[float(x) for x in lp] for lp in r["token_logprobs"]],
            "pair_status": choice.status, "best": choice.best, "worst": choice.worst,
        })
        if choice.status == PAIRED:
            pairs.append(dpo_pair(r["prompt_id"], r["prompt"], messages, texts, scores, choice))
            kto.extend(kto_examples(r["prompt_id"], r["prompt"], messages, texts, scores, choice))
    return candidates, pairs, kto


def run_rollout(recipe: Recipe, round_idx: int = 0, policy_dir: str | None = None, pool: Any = None) -> Path:
    """Run (or skip, if committed) the rollout stage of one round; return its folder.

    ``pool``: a running ``GeneratorPool`` already holding ``policy_dir``'s weights (the round loop's)."""
    run = RunDir(recipe.run_dir)
    if run.is_committed(round_idx, STAGE):
        log.info("round %d %s already committed: skipping", round_idx, STAGE)
        return run.stage_dir(round_idx, STAGE)
    policy_dir = policy_dir or recipe.policy.model
    preflight(recipe, policy_dir)
    from transformers import AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    prepared = prepare_prompts(recipe, recipe.data.train, tokenizer)
    read = prepared.read
    log.info("prompts: %d read, %d accepted, %d rejected", read.read, len(read.accepted), len(read.rejected))
    if not prepared.rows:
        raise RuntimeError(f"{recipe.data.train}: no usable prompts ({len(read.rejected)} rejected; "
                           f"first reason: {read.rejected[0].reason if read.rejected else 'empty file'})")
    t_read = time.perf_counter() - started
    init_ray(recipe.resources)
    results = check_complete(prepared.rows, generate_and_score(recipe, policy_dir, prepared.rows, pool),
                             recipe.rollout.num_samples)
    prepared.results = results
    t_stream = time.perf_counter() - started - t_read
    candidates, pairs, kto = select(recipe, results)
    with run.stage(round_idx, STAGE) as out:
        write_parquet(out / "candidates.parquet", candidates)
        write_parquet(out / "pairs.parquet", pairs)
        write_parquet(out / "kto.parquet", kto)
        write_jsonl(out / "rejected_inputs.jsonl", [r.to_dict() for r in read.rejected])
        write_manifest(out, rollout_manifest(recipe, round_idx, policy_dir, prepared, candidates, pairs, kto,
                                             {"read_s": t_read, "generate_and_score_s": t_stream,
                                              "total_s": time.perf_counter() - started}))
    log.info("round %d rollout: %d pairs from %d prompts", round_idx, len(pairs), len(results))
    return run.stage_dir(round_idx, STAGE)


def rollout_manifest(recipe: Recipe, round_idx: int, policy_dir: str, prepared: PreparedPrompts,
                     candidates: list[dict], pairs: list, kto: list, timings: dict[str, float]) -> dict[str, Any]:
    """Counts (read = accepted + rejected; used <= accepted), why prompts went unpaired, timings, throughput."""
    read, results = prepared.read, prepared.results
    unpaired: dict[str, int] = {}
    for c in candidates:
        if c["pair_status"] != PAIRED:
            unpaired[c["pair_status"]] = unpaired.get(c["pair_status"], 0) + 1
    gen_busy = sum(float(r["generate_s"]) for r in results)
    score_busy = sum(float(r["score_s"]) for r in results)
    tokens = sum(int(n) for r in results for n in r["num_tokens"])
    return {
        "stage": STAGE, "round": round_idx, "policy": policy_dir, "source": recipe.data.train,
        "counts": {"read": read.read, "accepted": len(read.accepted), "rejected": len(read.rejected),
                   "used": len(prepared.rows), "not_used_over_limit": len(read.accepted) - len(prepared.rows),
                   "prompts_generated": len(results), "candidates": sum(len(r["candidates"]) for r in results),
                   "pairs": len(pairs), "kto_examples": len(kto), "unpaired": unpaired},
        "timings_s": timings,
        "throughput": {"generated_tokens": tokens, "generator_busy_s": gen_busy, "scorer_busy_s": score_busy,
                       "tokens_per_generator_s": tokens / gen_busy if gen_busy else None},
    }


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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefloop.actors.common import check_model_dir
from prefloop.actors.generator_pool import check_sampled_from
from prefloop.app.model_stage import round_models, round_recipe
from prefloop.app.rundir import ROLLOUT, RunDir, write_manifest
from prefloop.app.pipeline import generator_stage, run_stages, scorer_stage
from prefloop.app.runtime import init_ray
from prefloop.app.tables import write_jsonl, write_parquet
from prefloop.core.config import Recipe
from prefloop.core.partition import RoundPart
from prefloop.core.prompts import Fields, ReadResult, read_prompts
from prefloop.core.selection import PAIRED, choose_pair, dpo_pair, kto_examples
from prefloop.core.model_info import control_token_of
from prefloop.core.templates import generation_text

if TYPE_CHECKING:
    from prefloop.actors.generator_pool import GeneratorPool

log = logging.getLogger(__name__)


@dataclass
class PreparedPrompts:
    read: ReadResult
    rows: list[dict[str, Any]]  # what goes into Ray Data, one per used prompt
    results: list[dict[str, Any]] = field(default_factory=list)  # what came back, in input order
    partition: dict[str, Any] | None = None  # which file / partition the round read (RoundPart.describe)


def prepare_prompts(recipe: Recipe, source: str, tokenizer: Any, round_idx: int | None = None) -> PreparedPrompts:
    """Read, validate and tokenise the prompts; over-budget prompts are rejected, not truncated.

    ``round_idx``: only that round's prompts (``{round}`` in the path, or its ``data.partitions`` share)."""
    style, budget = recipe.policy.chat_template, recipe.data.max_prompt_tokens
    control = control_token_of(getattr(tokenizer, "name_or_path", None))  # a cSFT model's <|good|>

    def token_ids(messages: list[dict[str, str]]) -> list[int]:
        return tokenizer(generation_text(messages, style, tokenizer, control), add_special_tokens=True)["input_ids"]

    def too_long(messages: list[dict[str, str]]) -> str | None:
        n = len(token_ids(messages))
        return f"prompt is {n} tokens, over data.max_prompt_tokens={budget}" if n > budget else None

    fields = Fields(recipe.data.prompt_field, recipe.data.messages_field, recipe.data.id_field)
    part = RoundPart(recipe.data, source, round_idx)
    read = read_prompts(part.path, fields, too_long)
    mine = part.select(read.accepted)
    used = mine[: recipe.data.limit] if recipe.data.limit is not None else mine
    rows = [{"prompt_id": r.prompt_id, "prompt": r.prompt, "messages": json.dumps(r.messages),
             "prompt_token_ids": token_ids(r.messages)} for r in used]
    return PreparedPrompts(read, rows, partition=part.describe(len(mine)))


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


def generate_and_score(recipe: Recipe, policy_dir: str, rows: list[dict[str, Any]],
                       pool: GeneratorPool | None = None) -> list[dict]:
    """Stream rows through the generator and scorer actor pools; return one result per prompt."""
    stages = [generator_stage(recipe, policy_dir, pool), scorer_stage(recipe)]
    return run_stages(rows, stages, recipe.resources.stage_timeout_s, f"{ROLLOUT}: prompts")


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
            "sampled_from": r.get("sampled_from"),
        })
        if choice.status == PAIRED:
            pairs.append(dpo_pair(r["prompt_id"], r["prompt"], messages, texts, scores, choice))
            kto.extend(kto_examples(r["prompt_id"], r["prompt"], messages, texts, scores, choice))
    return candidates, pairs, kto


def run_rollout(recipe: Recipe, round_idx: int = 0, policy_dir: str | None = None,
                pool: GeneratorPool | None = None) -> Path:
    """Run (or skip, if committed) the rollout stage of one round; return its folder.

    ``policy_dir``: the model to sample with, by default the one round ``round_idx`` starts from (as in the round
    loop); ``pool``: a running ``GeneratorPool`` already holding its weights (the round loop's)."""
    run = RunDir(recipe.run_dir)
    recipe = round_recipe(recipe, round_idx)
    if run.is_committed(round_idx, ROLLOUT):
        log.info("round %d %s already committed: skipping", round_idx, ROLLOUT)
        return run.stage_dir(round_idx, ROLLOUT)
    policy_dir = policy_dir or round_models(run, recipe, round_idx).start
    preflight(recipe, policy_dir)
    from transformers import AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    prepared = prepare_prompts(recipe, recipe.data.train, tokenizer, round_idx)
    read = prepared.read
    log.info("prompts: %d read, %d accepted, %d rejected", read.read, len(read.accepted), len(read.rejected))
    if not prepared.rows:
        raise RuntimeError(f"{prepared.partition['path']}: no usable prompts ({len(read.rejected)} rejected; "
                           f"first reason: {read.rejected[0].reason if read.rejected else 'empty file'})")
    t_read = time.perf_counter() - started
    init_ray(recipe.resources)
    results = check_complete(prepared.rows, generate_and_score(recipe, policy_dir, prepared.rows, pool),
                             recipe.rollout.num_samples)
    prepared.results = results
    check_sampled_from(results, policy_dir, f"round {round_idx} {ROLLOUT}")
    t_stream = time.perf_counter() - started - t_read
    candidates, pairs, kto = select(recipe, results)
    with run.commit(round_idx, ROLLOUT) as out:
        write_parquet(out / "candidates.parquet", candidates)
        write_parquet(out / "pairs.parquet", pairs)
        write_parquet(out / "kto.parquet", kto)
        write_jsonl(out / "rejected_inputs.jsonl", [r.to_dict() for r in read.rejected])
        write_manifest(out, rollout_manifest(recipe, round_idx, policy_dir, prepared, candidates, pairs, kto,
                                             {"read_s": t_read, "generate_and_score_s": t_stream,
                                              "total_s": time.perf_counter() - started}))
    log.info("round %d rollout: %d pairs from %d prompts", round_idx, len(pairs), len(results))
    return run.stage_dir(round_idx, ROLLOUT)


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
        "stage": ROLLOUT, "round": round_idx, "policy": policy_dir, "source": recipe.data.train,
        "partition": prepared.partition,
        "counts": {"read": read.read, "accepted": len(read.accepted), "rejected": len(read.rejected),
                   "used": len(prepared.rows),
                   "not_used_other_partitions": len(read.accepted) - prepared.partition["prompts_in_partition"],
                   "not_used_over_limit": prepared.partition["prompts_in_partition"] - len(prepared.rows),
                   "prompts_generated": len(results), "candidates": sum(len(r["candidates"]) for r in results),
                   "pairs": len(pairs), "kto_examples": len(kto), "unpaired": unpaired},
        "timings_s": timings,
        "throughput": {"generated_tokens": tokens, "generator_busy_s": gen_busy, "scorer_busy_s": score_busy,
                       "tokens_per_generator_s": tokens / gen_busy if gen_busy else None},
    }


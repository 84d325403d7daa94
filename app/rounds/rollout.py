"""The rollout stage: prompts -> vLLM samples -> scores -> DPO pairs and KTO examples, for one round.

Reads top to bottom:
1. list the prompt files (a missing file or column fails here, before Ray starts);
2. Ray Data readers check every row; the driver gets back ids and rejected records only and decides the
   duplicates, the round's partition and ``data.limit`` (``app/rounds/rollout_stream.py``, first pass);
3. the chosen rows stream through a pool of vLLM generator actors, then a pool of scorer actors; the driver
   checks each chunk that comes back (every prompt exactly once with N candidates, from the round's policy),
   selects pairs (pure ``core.selection``) and appends it to the Parquet files (second pass);
4. a manifest with the counts, and the stage is committed atomically.

The driver never holds the prompt set or the candidates: its memory does not grow with the prompts (see
``bench/rollout.py --scale``). ``prepare_prompts`` is the in-memory reader kept for the small held-out sets of
evaluation and ReMax.

Outputs in ``RUN_DIR/round_R/rollout/``: ``candidates.parquet``, ``pairs.parquet`` (prompt/chosen/rejected),
``kto.parquet`` (prompt/completion/label), ``rejected_inputs.jsonl``, ``manifest.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefloop.actors.generator_pool import check_sampled_from
from prefloop.app.dataflow.pipeline import generator_step, scorer_step
from prefloop.app.dataflow.runtime import init_ray
from prefloop.app.front.preflight import require_models
from prefloop.app.rounds.rollout_stream import Totals, index_prompts, stream_rollout
from prefloop.app.rounds.round import Round
from prefloop.app.storage.rundir import ROLLOUT, write_manifest
from prefloop.core.config import Recipe
from prefloop.core.model_info import control_token_of
from prefloop.core.partition import RoundPart
from prefloop.core.prompt_blocks import TokenBudget
from prefloop.core.prompt_files import Piece, Source, plan_pieces, plan_sources
from prefloop.core.prompt_index import Decision
from prefloop.core.prompts import Fields, ReadResult, read_prompts

log = logging.getLogger(__name__)


@dataclass
class PreparedPrompts:
    read: ReadResult
    rows: list[dict[str, Any]]  # what goes into Ray Data, one per used prompt
    partition: dict[str, Any] | None = None  # which file / partition the round read (RoundPart.describe)


def prepare_prompts(recipe: Recipe, source: str, tokenizer: Any, round_idx: int | None = None) -> PreparedPrompts:
    """Read, validate and tokenise the prompts; over-budget prompts are rejected, not truncated.

    ``round_idx``: only that round's prompts (``{round}`` in the path, or its ``data.partitions`` share)."""
    budget = TokenBudget(tokenizer, recipe.policy.chat_template, recipe.data.max_prompt_tokens,
                         control_token_of(getattr(tokenizer, "name_or_path", None)))  # a cSFT model's <|good|>
    part = RoundPart(recipe.data, source, round_idx)
    read = read_prompts(part.path, data_fields(recipe), budget.too_long)
    mine = part.select(read.accepted)
    used = mine[: recipe.data.limit] if recipe.data.limit is not None else mine
    rows = [{"prompt_id": r.prompt_id, "prompt": r.prompt, "messages": json.dumps(r.messages),
             "prompt_token_ids": budget.ids(r.messages)} for r in used]
    return PreparedPrompts(read, rows, partition=part.describe(len(mine)))


def data_fields(recipe: Recipe) -> Fields:
    return Fields(recipe.data.prompt_field, recipe.data.messages_field, recipe.data.id_field)


def preflight(recipe: Recipe, policy_dir: str) -> None:
    """The policy and the scorer, checked on the driver by the preflight's own checks, so that a library caller
    who skipped ``prefloop``'s preflight still fails in a second, not inside an actor."""
    require_models(recipe, ROLLOUT, policy_dir)


def run_rollout(rnd: Round) -> Path:
    """Run (or skip, if committed) the rollout stage of round ``rnd``; return its folder. It samples with the
    round's start model: through ``rnd.pool`` (the round loop's, already holding its weights) or, without one, a
    fresh vLLM actor pool."""
    recipe, policy_dir = rnd.recipe, rnd.models.start
    if rnd.is_committed(ROLLOUT):
        log.info("round %d %s already committed: skipping", rnd.index, ROLLOUT)
        return rnd.stage_dir(ROLLOUT)
    preflight(recipe, policy_dir)
    from transformers import AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    part = RoundPart(recipe.data, recipe.data.train, rnd.index)
    sources = plan_sources(part.path, data_fields(recipe))  # a missing file or column fails before Ray starts
    pieces = plan_pieces(sources, recipe.rollout.block_prompts)
    reader = reader_kwargs(recipe, tokenizer)
    init_ray(recipe.resources)
    with rnd.run.commit(rnd.index, ROLLOUT) as out:
        decision = choose_prompts(recipe, part, sources, pieces, reader, out)
        t_read = time.perf_counter() - started
        steps = [generator_step(recipe, policy_dir, rnd.pool, rnd.sampling("rollout")), scorer_step(recipe)]
        what = f"round {rnd.index} {ROLLOUT}"
        totals = stream_rollout(recipe, sources, pieces, decision, reader, steps, out,
                                lambda rows: check_sampled_from(rows, policy_dir, what))
        t_stream = time.perf_counter() - started - t_read
        timings = {"read_s": t_read, "generate_and_score_s": t_stream, "total_s": time.perf_counter() - started}
        write_manifest(out, rollout_manifest(recipe, rnd.index, policy_dir, decision,
                                             part.describe(decision.in_partition), totals, timings))
    log.info("round %d rollout: %d pairs from %d prompts", rnd.index, totals.pairs, totals.prompts)
    return rnd.stage_dir(ROLLOUT)


def reader_kwargs(recipe: Recipe, tokenizer: Any) -> dict[str, Any]:
    """What the Ray Data prompt readers are built with (``actors/prompt_reader.py``), the tokenizer included."""
    return {"tokenizer": tokenizer, "style": recipe.policy.chat_template,
            "max_prompt_tokens": recipe.data.max_prompt_tokens,
            "control": control_token_of(getattr(tokenizer, "name_or_path", None)),  # a cSFT model's <|good|>
            "fields": asdict(data_fields(recipe))}


def choose_prompts(recipe: Recipe, part: RoundPart, sources: list[Source], pieces: list[Piece],
                   reader: dict[str, Any], out: Path) -> Decision:
    """The first pass (rejected rows into ``rejected_inputs.jsonl``); raise when no prompt is usable."""
    with open(out / "rejected_inputs.jsonl", "w", encoding="utf-8") as rejected:
        decision, first_reason = index_prompts(sources, pieces, reader,
                                               lambda rows: part.select(rows, key=lambda r: r[2]),
                                               recipe.data.limit, recipe.resources.wait_timeout_s, rejected)
    log.info("prompts: %d read, %d accepted, %d rejected", decision.read, decision.accepted, decision.rejected)
    if not decision.used_ids:
        raise RuntimeError(f"{part.path}: no usable prompts ({decision.rejected} rejected; "
                           f"first reason: {first_reason or 'empty file'})")
    return decision


def rollout_manifest(recipe: Recipe, round_idx: int, policy_dir: str, decision: Decision, partition: dict[str, Any],
                     totals: Totals, timings: dict[str, float]) -> dict[str, Any]:
    """Counts (read = accepted + rejected; used <= accepted), why prompts went unpaired, timings, throughput."""
    busy = totals.generator_busy_s
    return {
        "stage": ROLLOUT, "round": round_idx, "policy": policy_dir, "source": recipe.data.train,
        "partition": partition,
        "counts": {"read": decision.read, "accepted": decision.accepted, "rejected": decision.rejected,
                   "used": len(decision.used_ids),
                   "not_used_other_partitions": decision.accepted - decision.in_partition,
                   "not_used_over_limit": decision.in_partition - len(decision.used_ids),
                   "prompts_generated": totals.prompts, "candidates": totals.candidates,
                   "pairs": totals.pairs, "kto_examples": totals.kto, "unpaired": totals.unpaired,
                   "scorer_prompts_truncated": totals.scorer_prompts_truncated},
        "timings_s": timings,
        "throughput": {"generated_tokens": totals.tokens, "generator_busy_s": busy,
                       "scorer_busy_s": totals.scorer_busy_s,
                       "tokens_per_generator_s": totals.tokens / busy if busy else None},
    }

"""The streaming rollout: prompt files -> Ray Data readers -> generators -> scorers -> Parquet, block by block.

The prompt files are cut into pieces of at most ``rollout.block_prompts`` rows (``core.prompt_files``) and read
twice, both times in Ray Data (``actors/prompt_reader.py``), one piece per reader call:

1. ``index_prompts``: readers check every row (``core.prompts.check_row`` and the token budget) and send back, per
   piece, only the accepted rows' numbers and prompt_ids and the rejected rows' records, which go straight into
   ``rejected_inputs.jsonl``. The driver then decides, in input order, the duplicates, the round's partition and
   ``data.limit`` (``core.prompt_index.PromptIndex``), as the in-memory reader does.
2. ``stream_rollout``: readers re-read only the chosen rows; the blocks are cut to one generator batch each
   (``rollout.batch_size`` rows, as before streaming) and flow through the generator and scorer actor pools; the
   driver takes the scored rows a chunk at a time, checks them (exactly once, N candidates, the round's policy),
   selects pairs and appends the chunk to ``candidates.parquet``, ``pairs.parquet`` and ``kto.parquet`` (one row
   group per chunk).

What the driver holds: the list of pieces, each accepted prompt's (piece, number, prompt_id), the set of used
ids, counts, and one chunk of scored rows at a time; never the prompt set or the candidates. The readers run on
the driver's node (the prompt path is the driver's); the tokenizer travels to them through Ray. A prompt set of a
single piece (at most ``block_prompts`` rows: the demo's, a test's) is read by the driver itself, which costs less
than starting a reader actor and still bounds what the driver holds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from prefloop.app.dataflow.pipeline import add_steps
from prefloop.app.dataflow.runtime import iterate_with_timeout
from prefloop.app.storage.tables import ParquetAppender
from prefloop.app.watch import console
from prefloop.core.config import Recipe
from prefloop.core.prompt_files import Fields, Piece, Source
from prefloop.core.prompt_index import Decision, ExactlyOnce, PromptIndex
from prefloop.core.round_settings import sampling
from prefloop.core.selection import PAIRED, choose_pair, dpo_pair, kto_examples

log = logging.getLogger(__name__)

READER_CPUS = 0.25  # checking and tokenising prompts is light; a whole CPU could starve a small cluster's stages
WRITE_ROWS = 256  # scored rows the driver selects and writes at a time (one Parquet row group per file)


def output_schemas() -> dict[str, Any]:
    """The three tables' columns (fixed, so every chunk appends to the same file and an empty table has them)."""
    import pyarrow as pa

    s, f, i = pa.string(), pa.float64(), pa.int64()
    messages = pa.list_(pa.struct([("role", s), ("content", s)]))
    head = [("prompt_id", s), ("prompt", s), ("messages", messages)]
    return {
        "candidates.parquet": pa.schema(head + [
            ("candidates", pa.list_(s)), ("scores", pa.list_(f)), ("num_tokens", pa.list_(i)),
            ("finish_reasons", pa.list_(s)), ("sum_logprob", pa.list_(f)), ("token_logprobs", pa.list_(pa.list_(f))),
            ("pair_status", s), ("best", i), ("worst", i), ("sampled_from", s)]),
        "pairs.parquet": pa.schema(head + [("chosen", s), ("rejected", s), ("score_chosen", f),
                                           ("score_rejected", f), ("margin", f)]),
        "kto.parquet": pa.schema(head + [("completion", s), ("label", pa.bool_()), ("score", f)]),
    }


def reader_dataset(items: list[dict[str, Any]], reader_kwargs: dict[str, Any]) -> Any:
    """A dataset of the reader's output over ``items`` (one per piece), in input order, read on this node (a
    single piece, say a demo's prompt set, by the driver itself: a reader actor's start costs more than it)."""
    import ray

    from prefloop.actors.prompt_reader import PromptReader

    pieces = [json.dumps(item) for item in items]
    if len(pieces) == 1:  # one piece, at most block_prompts rows: read here rather than start a reader actor
        ds = ray.data.from_arrow(PromptReader(**reader_kwargs)({"piece": pieces}))
        ds.context.execution_options.preserve_order = True
        return ds
    ds = ray.data.from_items([{"piece": p} for p in pieces], override_num_blocks=len(pieces))
    ds.context.execution_options.preserve_order = True  # outputs in input order (this dataset's context only)
    here = {f"node:{ray.util.get_node_ip_address()}": 0.001}  # the prompt path is this machine's
    return ds.map_batches(PromptReader, fn_constructor_kwargs=reader_kwargs, batch_size=1,
                          compute=ray.data.ActorPoolStrategy(size=1), num_cpus=READER_CPUS, resources=here)


def _item(index: int, sources: list[Source], pieces: list[Piece], keep: list[int] | None = None) -> dict[str, Any]:
    piece = pieces[index]
    return {"index": index, "source": sources[piece.source].to_dict(), "piece": piece.to_dict(), "keep": keep}


def index_prompts(sources: list[Source], pieces: list[Piece], reader_kwargs: dict[str, Any], select: Callable | None,
                  limit: int | None, timeout_s: float, rejected_out: TextIO) -> tuple[Decision, str | None]:
    """First pass: every row checked in Ray Data; rejected records written to ``rejected_out`` as they come.
    Returns the driver's decision and the first rejection's reason (for an error when nothing is usable)."""
    index = PromptIndex(sources, pieces, Fields(**reader_kwargs["fields"]))
    ds = reader_dataset([_item(i, sources, pieces) for i in range(len(pieces))], {**reader_kwargs, "mode": "check"})
    first_reason = None
    for row in iterate_with_timeout(ds.iter_rows(), timeout_s, "rollout: reading prompts"):
        for record in index.add(json.loads(row["summary"])):
            rejected_out.write(json.dumps(record, ensure_ascii=False) + "\n")
            first_reason = first_reason or record["reason"]
    decision = index.decide(select, limit)
    for dup in decision.duplicates:
        rejected_out.write(json.dumps(dup.to_dict(), ensure_ascii=False) + "\n")
        first_reason = first_reason or dup.reason
    return decision, first_reason


@dataclass
class Totals:
    """What the manifest reports of the streamed rows, summed chunk by chunk."""

    prompts: int = 0
    candidates: int = 0
    pairs: int = 0
    kto: int = 0
    tokens: int = 0
    generator_busy_s: float = 0.0
    scorer_busy_s: float = 0.0
    scorer_prompts_truncated: int = 0  # candidates a reward model scored from a left-truncated conversation
    unpaired: dict[str, int] = field(default_factory=dict)

    def add(self, results: list[dict], candidates: list[dict], pairs: list, kto: list) -> None:
        self.prompts += len(results)
        self.candidates += sum(len(r["candidates"]) for r in results)
        self.pairs, self.kto = self.pairs + len(pairs), self.kto + len(kto)
        self.tokens += sum(int(n) for r in results for n in r["num_tokens"])
        self.generator_busy_s += sum(float(r["generate_s"]) for r in results)
        self.scorer_busy_s += sum(float(r["score_s"]) for r in results)
        self.scorer_prompts_truncated += sum(int(r.get("prompt_truncated") or 0) for r in results)
        for c in candidates:
            if c["pair_status"] != PAIRED:
                self.unpaired[c["pair_status"]] = self.unpaired.get(c["pair_status"], 0) + 1


def stream_rollout(recipe: Recipe, sources: list[Source], pieces: list[Piece], decision: Decision,
                   reader_kwargs: dict[str, Any], stages: list[Any], out: Path,
                   check_rows: Callable[[list[dict]], None]) -> Totals:
    """Second pass: the chosen rows through ``stages`` (generators, scorers); selection and the three tables
    written chunk by chunk into ``out``. ``check_rows(chunk)`` raises on rows from the wrong model."""
    items = [_item(i, sources, pieces, numbers) for i, numbers in sorted(decision.keep.items())]
    ds = reader_dataset(items, {**reader_kwargs, "mode": "rows"})
    # One block per generator call: a pool of generators shares the work, and results come back batch by batch
    # (the timeout is between results).
    ds = add_steps(ds.repartition(target_num_rows_per_block=recipe.rollout.batch_size), stages)
    once, totals = ExactlyOnce(decision.used_ids, sampling(recipe, "rollout").n), Totals()
    desc = "rollout: prompts"
    rows = console.track(iterate_with_timeout(ds.iter_rows(), recipe.resources.wait_timeout_s, desc),
                         len(decision.used_ids), desc)
    writers = {name: ParquetAppender(out / name, schema) for name, schema in output_schemas().items()}
    try:
        for chunk in chunked(rows, WRITE_ROWS):
            for r in chunk:
                once.see(str(r["prompt_id"]), len(r["candidates"]))
            check_rows(chunk)
            candidates, pairs, kto = select(recipe, chunk)
            for name, table in zip(writers, (candidates, pairs, kto)):
                writers[name].write(table)
            totals.add(chunk, candidates, pairs, kto)
        once.finish()
    finally:
        for w in writers.values():
            w.close()
    return totals


def chunked(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def select(recipe: Recipe, results: list[dict[str, Any]]) -> tuple[list, list, list]:
    """Candidates table rows (with pair_status), DPO pairs and KTO examples of scored rows (pure)."""
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

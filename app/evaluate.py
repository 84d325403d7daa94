"""Per-round evaluation on held-out prompts: win rate against the base model, judged by the recipe's scorer.

The base model's answers to the held-out prompts are generated once (``round_0/base_answers``); after each
round, the round's model answers the same prompts (greedy by default) and the judge compares the two answers
of every prompt. Outputs in ``round_R/eval/``: ``answers.parquet`` (both answers, scores, lengths, who won),
``alpaca_eval.json`` (AlpacaEval's ``instruction/output/generator`` format, to judge elsewhere) and a manifest
with win rate, mean score and mean length. Length is reported beside win rate because PairRM-style judges
are known to favour longer answers.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from prefloop.app.rollout import PreparedPrompts, generator_stage, prepare_prompts, run_stages, scorer_stage
from prefloop.app.rundir import RunDir, write_manifest
from prefloop.app.tables import read_parquet_rows, write_parquet
from prefloop.core.config import Recipe, response_tokens
from prefloop.core.metrics import summarize_comparison
from prefloop.core.sampling import SampleSpec

log = logging.getLogger(__name__)
BASE_STAGE, EVAL_STAGE = "base_answers", "eval"


def eval_prompts(recipe: Recipe, tokenizer: Any) -> PreparedPrompts:
    if not recipe.data.eval:
        raise ValueError("data.eval: the round loop needs held-out prompts to evaluate on")
    prepared = prepare_prompts(recipe, recipe.data.eval, tokenizer)
    prepared.rows = prepared.rows[: recipe.loop.eval_limit]
    return prepared


def generate_answers(recipe: Recipe, rows: list[dict], pool: Any) -> list[dict]:
    """One answer per held-out prompt from the model the pool holds now."""
    spec = SampleSpec(1, recipe.loop.eval_temperature, 1.0, response_tokens(recipe), recipe.rollout.seed)
    out = run_stages(rows, [generator_stage(recipe, pool.model, pool, spec)], recipe.resources.stage_timeout_s,
                     "eval: answers")
    by_id = {r["prompt_id"]: r for r in out}
    return [{"prompt_id": row["prompt_id"], "prompt": row["prompt"], "messages": row["messages"],
             "answer": by_id[row["prompt_id"]]["candidates"][0],
             "num_tokens": int(by_id[row["prompt_id"]]["num_tokens"][0])} for row in rows]


def judge(recipe: Recipe, answers: list[dict], base: list[dict]) -> list[tuple[float, float]]:
    """The recipe's scorer on [round answer, base answer] for every prompt: (score_round, score_base)."""
    base_by_id = {b["prompt_id"]: b["answer"] for b in base}
    rows = [{"prompt_id": a["prompt_id"], "prompt": a["prompt"], "messages": a["messages"],
             "candidates": [a["answer"], base_by_id[a["prompt_id"]]]} for a in answers]
    out = run_stages(rows, [scorer_stage(recipe)], recipe.resources.stage_timeout_s, "eval: judge")
    by_id = {r["prompt_id"]: r["scores"] for r in out}
    return [(float(by_id[a["prompt_id"]][0]), float(by_id[a["prompt_id"]][1])) for a in answers]


def base_answers(recipe: Recipe, run: RunDir, rows: list[dict], pool: Any) -> list[dict]:
    """The base model's held-out answers, generated once per run (the pool must hold the base model)."""
    if not run.is_committed(0, BASE_STAGE):
        answers = generate_answers(recipe, rows, pool)
        with run.stage(0, BASE_STAGE) as out:
            write_parquet(out / "answers.parquet", answers)
            write_manifest(out, {"stage": BASE_STAGE, "model": pool.model, "prompts": len(answers)})
    return read_parquet_rows(run.stage_dir(0, BASE_STAGE) / "answers.parquet")


def evaluate_round(recipe: Recipe, run: RunDir, round_idx: int, rows: list[dict], base: list[dict], pool: Any,
                   extra: dict[str, Any], round_started: float) -> dict[str, Any]:
    """Answer, judge against the base, commit ``round_R/eval``; return its manifest.

    ``round_started`` (``time.perf_counter()`` at the round's start) dates the round's total time."""
    started = time.perf_counter()
    answers = generate_answers(recipe, rows, pool)
    scores = judge(recipe, answers, base)
    summary = summarize_comparison(scores, [a["num_tokens"] for a in answers], [b["num_tokens"] for b in base])
    for a, (mine, theirs) in zip(answers, scores):
        a.update(score=mine, base_score=theirs, outcome="win" if mine > theirs else "tie" if mine == theirs else "loss")
    manifest = {"stage": EVAL_STAGE, "round": round_idx, "model": pool.model, **summary, **extra}
    manifest.setdefault("timings_s", {}).update(eval=time.perf_counter() - started,
                                                round=time.perf_counter() - round_started)
    with run.stage(round_idx, EVAL_STAGE) as out:
        write_parquet(out / "answers.parquet", answers)
        write_alpaca_eval(out / "alpaca_eval.json", answers, f"{recipe.name}-round-{round_idx}")
        write_manifest(out, manifest)
    return manifest


def write_alpaca_eval(path: Path, answers: list[dict], generator: str) -> None:
    items = [{"instruction": a["prompt"], "output": a["answer"], "generator": generator, "dataset": "prefloop",
              "prompt_id": a["prompt_id"]} for a in answers]
    path.write_text(json.dumps(items, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


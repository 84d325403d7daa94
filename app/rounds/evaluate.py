"""Per-round evaluation on held-out prompts: the round's answers against the base model's, by two judges.

The baseline's answers to the held-out prompts are committed once (``round_0/base_answers``): the base model's,
or with ``eval.baseline: reference`` the held-out file's reference outputs (AlpacaEval 2.0's baseline); after each
round, the round's model answers the same prompts (greedy by default) and both the EVAL judge (``eval.judge``:
one that did not train the model) and the TRAINING scorer compare the two answers of every prompt
(``app/judging/eval_judges.py``). A proxy's own verdict rising while an independent judge's does not is the signature of
reward hacking, so the manifest carries both, plus signals of the usual hacks: length, truncation, repeated
sentences, low bigram diversity (``core/eval_metrics.py``), for the round and the base alike. With ``eval.best_of``
the round's model is also sampled N times per prompt, reranked by PairRM and the top answer judged the same way.

Outputs in ``round_R/eval/``: ``answers.parquet`` (both answers, lengths, finish reasons, both judges' scores or
preferences, who won), ``alpaca_eval.json`` (AlpacaEval's ``instruction/output/generator`` format, to judge
elsewhere), ``best_of.parquet`` (with ``eval.best_of``), ``rejected_inputs.jsonl`` (held-out records refused, with
the reason; the manifest's ``eval_prompts`` has the counts) and ``manifest.json`` with the fixed keys
``win_rate``, ``win_rate_stderr`` (eval judge), ``scorer_win_rate`` (training scorer), ``lc_win_rate``,
``lc_unstable``, ``mean_length``, ``truncation_rate``, ``repetition_rate``, ``distinct_2``, the ``base_*`` of the
same four, ``judge`` (the eval judge's kind) and ``judge_independent``; with best-of-N also ``best_of_n``,
``best_of_win_rate``, ``best_of_win_rate_stderr``; with the ``ifeval`` eval judge also IFEval's four figures
(``ifeval_prompt_strict`` / ``_loose``, ``ifeval_instruction_strict`` / ``_loose``, and ``base_*``) and
``ifeval_per_id``; ``baseline`` (base / reference); with AlpacaEval's annotator as the judge
(``eval.judge.protocol: alpaca_eval``) an ``alpaca_eval`` section of AlpacaEval's own figures
(``app/judging/alpaca_eval_lc.py``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from prefloop.app.dataflow.pipeline import pooled_generator_step, run_steps
from prefloop.app.judging import eval_judges
from prefloop.app.rounds import eval_sets
from prefloop.app.rounds.rollout import PreparedPrompts, prepare_prompts
from prefloop.app.rounds.round import Round
from prefloop.app.storage.model_files import rows_for_model
from prefloop.app.storage.rundir import BASE_ANSWERS, EVAL, RunDir, write_manifest
from prefloop.app.storage.tables import read_parquet_rows, write_parquet
from prefloop.core.config import Recipe
from prefloop.core.eval_reference import read_references
from prefloop.core.prompts import Fields
from prefloop.core.eval_metrics import answer_metrics, lc_win_rate, win_rate
from prefloop.core.metrics import summarize_comparison
from prefloop.core.round_settings import sampling

log = logging.getLogger(__name__)
NOT_INDEPENDENT = ("the eval judge is the training scorer: its win rate cannot show reward hacking "
                   "(set eval.judge to a judge that did not train the model)")


class EvalRows(list):
    """The held-out rows to answer (a list of row dicts), with what was left out of the held-out file: its
    rejected records (``rejected``: file, location, field, reason) and the counts (``counts``)."""

    rejected: list[dict[str, str]]
    counts: dict[str, int]
    references: dict[str, dict[str, Any]] | None = None  # eval.baseline reference: prompt_id -> answer, length
    sets: dict[str, "EvalRows"] | None = None  # eval.sets: each named set's rows (app/rounds/eval_sets.py)


class BaseAnswers(list):
    """The baseline's answers to the main held-out set, and (``sets``) each named set's."""

    sets: dict[str, list[dict]] | None = None


def eval_prompts(recipe: Recipe, tokenizer: Any) -> PreparedPrompts:
    """The held-out prompts: the whole eval file (``data.limit`` cuts training prompts only; the token budget is
    ``eval.max_prompt_tokens`` when set), at most ``loop.eval_limit`` of them; ``.rows`` is an ``EvalRows`` whose
    rejections go in every eval manifest, with the reference outputs under ``eval.baseline: reference``."""
    if not recipe.data.eval:
        raise ValueError("data.eval: the round loop needs held-out prompts to evaluate on")
    eval_judges.preflight(recipe)
    budget = recipe.eval.max_prompt_tokens or recipe.data.max_prompt_tokens
    whole = recipe.model_copy(update={"data": recipe.data.model_copy(update={"limit": None,
                                                                             "max_prompt_tokens": budget})})
    prepared = prepare_prompts(whole, recipe.data.eval, tokenizer)
    rows = EvalRows(prepared.rows[: recipe.loop.eval_limit])
    rows.rejected = [r.to_dict() for r in prepared.read.rejected]
    rows.counts = {"read": prepared.read.read, "accepted": len(prepared.read.accepted),
                   "rejected": len(prepared.read.rejected), "used": len(rows),
                   "not_used_over_eval_limit": len(prepared.rows) - len(rows)}
    if rows.rejected:
        log.warning("held-out prompts %s: %d rejected (first: %s)", recipe.data.eval, len(rows.rejected),
                    rows.rejected[0]["reason"])
    if recipe.eval.baseline == "reference":
        rows.references = reference_rows(recipe, rows, tokenizer)
    rows.sets = {name: eval_prompts(eval_sets.set_recipe(recipe, name), tokenizer).rows for name in recipe.eval.sets}
    prepared.rows = rows
    return prepared


def reference_rows(recipe: Recipe, rows: list[dict], tokenizer: Any) -> dict[str, dict[str, Any]]:
    """``eval.baseline: reference``: each used prompt's reference output and its length in the policy's tokens
    (the length signals compare like with like); a row without one stops here, naming the file and row."""
    d = recipe.data
    refs = read_references(d.eval, Fields(d.prompt_field, d.messages_field, d.id_field), recipe.eval.reference_field)
    out = {}
    for row in rows:
        text = refs[row["prompt_id"]]
        out[row["prompt_id"]] = {"answer": text, "finish_reason": "reference",
                                 "num_tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"])}
    return out


def generate_answers(recipe: Recipe, rows: list[dict], pool: Any) -> list[dict]:
    """One answer per held-out prompt from the model the pool holds now, with its length and finish reason."""
    rows = rows_for_model(rows, pool.model, recipe.policy.chat_template)  # a cSFT model's control token
    out = run_steps(rows, [pooled_generator_step(recipe, pool, sampling(recipe, "eval"))], recipe.resources.wait_timeout_s,
                     "eval: answers")
    by_id = {r["prompt_id"]: r for r in out}
    return [{"prompt_id": row["prompt_id"], "prompt": row["prompt"], "messages": row["messages"],
             "answer": by_id[row["prompt_id"]]["candidates"][0],
             "num_tokens": int(by_id[row["prompt_id"]]["num_tokens"][0]),
             "finish_reason": str(by_id[row["prompt_id"]]["finish_reasons"][0])} for row in rows]


def base_answers(recipe: Recipe, run: RunDir, rows: list[dict], pool: Any, stage: str = BASE_ANSWERS) -> BaseAnswers:
    """The baseline's held-out answers, committed once per run: the base model's (the pool must hold it), or
    with ``eval.baseline: reference`` the held-out file's reference outputs (``rows.references``); then each
    named set's (``eval.sets``, stage ``base_answers-NAME``) in ``.sets``."""
    baseline = recipe.eval.baseline
    if not run.is_committed(0, stage):
        if baseline == "reference":
            refs = getattr(rows, "references", None)
            if refs is None:
                raise ValueError("eval.baseline 'reference': the held-out rows carry no reference outputs")
            answers = [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "messages": r["messages"],
                        **refs[r["prompt_id"]]} for r in rows]
            model = f"reference outputs ({recipe.data.eval}: {recipe.eval.reference_field})"
        else:
            answers, model = generate_answers(recipe, rows, pool), pool.model
        with run.commit(0, stage) as out:
            write_parquet(out / "answers.parquet", answers)
            write_manifest(out, {"stage": stage, "model": model, "prompts": len(answers), "baseline": baseline})
    committed = run.manifest(0, stage).get("baseline", "base")
    if committed != baseline:
        raise RuntimeError(f"{run.stage_dir(0, stage)}: this run's baseline is {committed!r}, the recipe's "
                           f"eval.baseline is {baseline!r}. Start a new run directory, or set it back.")
    base = BaseAnswers(read_parquet_rows(run.stage_dir(0, stage) / "answers.parquet"))
    missing = {r["prompt_id"] for r in rows} - {b["prompt_id"] for b in base}
    if missing:  # e.g. a run whose held-out set was cut by data.limit before the eval set was kept whole
        raise RuntimeError(f"{run.stage_dir(0, stage)}: the base answers lack {len(missing)} of the "
                           f"{len(rows)} held-out prompts (first: {sorted(missing)[0]}); this run's eval set "
                           f"changed. Start a new run directory, or remove that stage and every eval stage.")
    base.sets = {name: base_answers(eval_sets.set_recipe(recipe, name), run, rows.sets[name], pool,
                                    eval_sets.base_stage(name)) for name in (getattr(rows, "sets", None) or {})}
    return base


def side_metrics(answers: list[dict], prefix: str = "") -> dict[str, Any]:
    """Length, truncation, repetition and distinct-2 of one side's answers. A base stage written before finish
    reasons were recorded has no truncation rate (None), rather than a guessed one."""
    reasons = [a.get("finish_reason") for a in answers]
    known = all(r is not None for r in reasons)
    out = answer_metrics([a["answer"] for a in answers], [a["num_tokens"] for a in answers],
                         reasons if known else ["unknown"] * len(answers), prefix)
    if not known:
        out[f"{prefix}truncation_rate"] = None
    return out


def comparison(answers: list[dict], base: list[dict], verdicts: list[dict]) -> dict[str, Any]:
    """Win rate (± stderr) and the length-controlled win rate of one set of answers by one judge's verdicts."""
    base_len = {b["prompt_id"]: b["num_tokens"] for b in base}
    prefs = [v["preference"] for v in verdicts]
    rate, stderr = win_rate(prefs)
    lc = lc_win_rate(prefs, [a["num_tokens"] for a in answers], [base_len[a["prompt_id"]] for a in answers])
    return {"win_rate": rate, "win_rate_stderr": stderr, "lc_win_rate": lc.lc_win_rate, "lc_unstable": lc.unstable,
            "lc_unstable_reason": lc.reason, "lc_fit": {"intercept": lc.intercept, "slope": lc.slope}}


def judged_summary(recipe: Recipe, answers: list[dict], base: list[dict], training: list[dict],
                   verdicts: list[dict]) -> dict[str, Any]:
    """The manifest's evaluation keys (see the module docstring); the counts are the eval judge's."""
    base_by_id = {b["prompt_id"]: b for b in base}
    paired_base = [base_by_id[a["prompt_id"]] for a in answers]
    scores = [(v["score"], v["base_score"]) for v in training]
    train = summarize_comparison(scores, [a["num_tokens"] for a in answers], [b["num_tokens"] for b in paired_base])
    prefs = [v["preference"] for v in verdicts]
    out: dict[str, Any] = {
        **train, **comparison(answers, paired_base, verdicts),
        "wins": sum(p > 0.5 for p in prefs), "ties": sum(p == 0.5 for p in prefs), "losses": sum(p < 0.5 for p in prefs),
        "scorer_win_rate": train["win_rate"], "scorer_win_rate_stderr": train["win_rate_stderr"],
        "judge": eval_judges.eval_judge_name(recipe), "judge_independent": eval_judges.judge_independent(recipe),
        "training_judge": recipe.scorer.kind, "baseline": recipe.eval.baseline,
        **side_metrics(answers), **side_metrics(paired_base, "base_"),
    }
    if all("score" in v for v in verdicts):
        out["eval_mean_score"] = sum(v["score"] for v in verdicts) / len(verdicts)
        out["eval_mean_base_score"] = sum(v["base_score"] for v in verdicts) / len(verdicts)
    if verdicts and "strict" in verdicts[0]:  # the ifeval judge: IFEval's four figures and its instruction table
        from prefloop.app.judging.ifeval_judge import manifest_figures

        out.update(manifest_figures(verdicts))
    if verdicts and "alpaca_eval_preference" in verdicts[0]:  # AlpacaEval's own figures, as the cards report
        from prefloop.app.judging import alpaca_eval_lc

        judge = recipe.eval.judge
        out["alpaca_eval"] = {"annotator": judge.annotator, "orders": judge.orders, "baseline": recipe.eval.baseline,
                              **alpaca_eval_lc.figures([v["alpaca_eval_preference"] for v in verdicts],
                                                       [a["answer"] for a in answers],
                                                       [b["answer"] for b in paired_base])}
    if not out["judge_independent"]:
        out["warning"] = NOT_INDEPENDENT
    return out


def answer_rows(answers: list[dict], base: list[dict], training: list[dict], verdicts: list[dict]) -> list[dict]:
    """``answers.parquet``: per prompt both answers, lengths, finish reasons and both judges' verdicts."""
    base_by_id = {b["prompt_id"]: b for b in base}
    rows = []
    for a, t, v in zip(answers, training, verdicts):
        b = base_by_id[a["prompt_id"]]
        row = {**a, "base_answer": b["answer"], "base_num_tokens": b["num_tokens"],
               "base_finish_reason": b.get("finish_reason"),
               "score": t["score"], "base_score": t["base_score"], "judge_preference": t["preference"],
               "outcome": outcome(t["preference"]), "eval_preference": v["preference"],
               "eval_outcome": outcome(v["preference"])}
        row.update({f"eval_{k}": val for k, val in v.items() if k != "preference"})
        rows.append(row)
    return rows


def outcome(pref: float) -> str:
    return "win" if pref > 0.5 else "tie" if pref == 0.5 else "loss"


def best_of_summary(recipe: Recipe, rows: list[dict], base: list[dict], pool: Any) -> tuple[dict, list[dict]]:
    """``eval.best_of``: the reranked best of N per prompt, judged by the eval judge against the base."""
    n = recipe.eval.best_of
    best = eval_judges.best_of_answers(recipe, rows, pool)
    verdicts = eval_judges.eval_verdicts(recipe, best, base)
    rate, stderr = win_rate([v["preference"] for v in verdicts])
    table = [{**b, "eval_preference": v["preference"]} for b, v in zip(best, verdicts)]
    return {"best_of_n": n, "best_of_win_rate": rate, "best_of_win_rate_stderr": stderr,
            "best_of_mean_length": sum(b["num_tokens"] for b in best) / len(best)}, table


def evaluate_round(rnd: Round, rows: list[dict], base: list[dict], summary: dict[str, Any],
                   round_started: float) -> dict[str, Any]:
    """Answer with the model ``rnd.pool`` holds, judge against the base, commit ``round_R/eval`` (with the round's
    ``summary``); return its manifest. ``round_started`` (``time.perf_counter()`` at the round's start) dates the
    round's total time."""
    recipe, run, round_idx, pool = rnd.recipe, rnd.run, rnd.index, rnd.pool
    started = time.perf_counter()
    judged, answers, table = judge_set(recipe, rows, base, pool)
    sets = {name: judge_set(eval_sets.set_recipe(recipe, name), set_rows, base.sets[name], pool)
            for name, set_rows in (getattr(rows, "sets", None) or {}).items()}
    if sets:
        judged["eval_sets"] = {name: figures for name, (figures, _, _) in sets.items()}
    best_table = None
    if recipe.eval.best_of is not None:
        best, best_table = best_of_summary(recipe, rows, base, pool)
        judged.update(best)
    manifest = {"stage": EVAL, "round": round_idx, "model": pool.model, **judged, **summary}
    manifest.setdefault("timings_s", {}).update(eval=time.perf_counter() - started,
                                                round=time.perf_counter() - round_started)
    with run.commit(round_idx, EVAL) as out:
        write_parquet(out / "answers.parquet", table)
        for name, (_, _, set_table) in sets.items():
            (out / "sets" / name).mkdir(parents=True)
            write_parquet(out / "sets" / name / "answers.parquet", set_table)
        if best_table is not None:
            write_parquet(out / "best_of.parquet", best_table)
        write_alpaca_eval(out / "alpaca_eval.json", answers, f"{recipe.name}-round-{round_idx}")
        if isinstance(rows, EvalRows):
            with open(out / "rejected_inputs.jsonl", "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.rejected)
        write_manifest(out, manifest)
    return manifest


def judge_set(recipe: Recipe, rows: list[dict], base: list[dict], pool: Any) -> tuple[dict, list[dict], list[dict]]:
    """One held-out set answered by the model the pool holds and judged against its baseline: the manifest's
    figures (with ``eval_prompts``, what the file had that is not judged, and why), the answers, the table."""
    answers = generate_answers(recipe, rows, pool)
    training = eval_judges.training_verdicts(recipe, answers, base)
    verdicts = eval_judges.eval_verdicts(recipe, answers, base, training)
    judged = judged_summary(recipe, answers, base, training, verdicts)
    if isinstance(rows, EvalRows):
        judged["eval_prompts"] = {**rows.counts, "source": recipe.data.eval}
    return judged, answers, answer_rows(answers, base, training, verdicts)


def write_alpaca_eval(path: Path, answers: list[dict], generator: str) -> None:
    items = [{"instruction": a["prompt"], "output": a["answer"], "generator": generator, "dataset": "prefloop",
              "prompt_id": a["prompt_id"]} for a in answers]
    path.write_text(json.dumps(items, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


"""The judges of the per-round evaluation: the eval judge, the training scorer beside it, and best-of-N reranking.

- ``training_verdicts``: the recipe's training scorer (``scorer``) on [round answer, base answer] per prompt.
- ``eval_verdicts``: the eval judge (``eval.judge``): ``pairrm`` / ``reward_model`` through the same Ray Data
  scorer stages, ``function`` called on the driver (no actor to start for a few dozen answers),
  ``llm_judge`` through ``app/judging/llm_judge.py`` (or, with ``protocol: alpaca_eval``, AlpacaEval 2.0's own
  annotator, ``app/judging/alpaca_eval_judge.py``), ``ifeval`` on the driver (``app/judging/ifeval_judge.py``);
  with no ``eval.judge``, the training scorer's verdicts are reused and the judge is marked not independent.
- ``best_of_answers``: N samples per prompt from the model the pool holds, reranked by PairRM (the eval judge if
  it is PairRM, else the training scorer; the recipe's validation guarantees one of them is), the top one kept.

A verdict is a dict per prompt: ``preference`` in [0, 1] for the round's answer (1 win, 0.5 tie, 0 loss; an LLM
judge's log-probs give values in between) and, for scalar judges, both ``score`` and ``base_score``.
"""

from __future__ import annotations

import logging
from typing import Any

from prefloop.app.dataflow.pipeline import pooled_generator_step, run_steps, scorer_step
from prefloop.core.config import Recipe
from prefloop.core.eval_metrics import preference
from prefloop.core.judge_config import JudgeConfig, ScorerConfig
from prefloop.core.judges import check_judge, judge_kind
from prefloop.core.round_settings import sampling

log = logging.getLogger(__name__)


def eval_judge_name(recipe: Recipe) -> str:
    """The eval judge's kind as the manifest reports it (the training scorer's when there is no eval judge)."""
    return recipe.eval.judge.kind if recipe.eval.judge is not None else recipe.scorer.kind


def judge_independent(recipe: Recipe) -> bool:
    """False when the eval judge is the training scorer (absent, or configured identically)."""
    judge = recipe.eval.judge
    if judge is None:
        return False
    if judge_kind(judge.kind).scorer is None:  # an LLM judge never trains the model
        return True
    return judge.as_scorer().model_dump(include={"kind", "model", "function", "chat_template"}) != \
        recipe.scorer.model_dump(include={"kind", "model", "function", "chat_template"})


def preflight(recipe: Recipe) -> None:
    """Check the eval judge on the driver before round 0 (its registry entry's check: the function imports, the
    model directories exist, the LLM judge's API key is set), so a typo fails in a second."""
    if recipe.eval.judge is not None:
        check_judge(recipe.eval.judge, "eval.judge")


def _with_scorer(recipe: Recipe, scorer: ScorerConfig) -> Recipe:
    return recipe.model_copy(update={"scorer": scorer})


def scalar_verdicts(recipe: Recipe, answers: list[dict], base: list[dict], what: str) -> list[dict[str, Any]]:
    """``recipe.scorer`` on [answer, base answer] of every prompt: score, base_score, preference."""
    base_by_id = {b["prompt_id"]: b["answer"] for b in base}
    rows = [{"prompt_id": a["prompt_id"], "prompt": a["prompt"], "messages": a["messages"],
             "candidates": [a["answer"], base_by_id[a["prompt_id"]]]} for a in answers]
    out = run_steps(rows, [scorer_step(recipe)], recipe.resources.wait_timeout_s, f"eval: {what}")
    by_id = {r["prompt_id"]: r["scores"] for r in out}
    missing = [a["prompt_id"] for a in answers if a["prompt_id"] not in by_id]
    if missing:
        raise RuntimeError(f"eval: {what}: {len(missing)} prompts never came back (first: {missing[:5]})")
    verdicts = []
    for a in answers:
        score, base_score = (float(s) for s in by_id[a["prompt_id"]])
        verdicts.append({"score": score, "base_score": base_score, "preference": preference(score, base_score)})
    return verdicts


def training_verdicts(recipe: Recipe, answers: list[dict], base: list[dict]) -> list[dict[str, Any]]:
    return scalar_verdicts(recipe, answers, base, f"training scorer ({recipe.scorer.kind})")


def eval_verdicts(recipe: Recipe, answers: list[dict], base: list[dict],
                  training: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The eval judge's verdicts (``training``'s when there is no eval judge, so they are not computed twice)."""
    judge = recipe.eval.judge
    if judge is None:
        return training if training is not None else training_verdicts(recipe, answers, base)
    if judge_kind(judge.kind).scorer is None:  # an LLM judge compares the two answers itself
        from prefloop.app.judging.llm_judge import LLMJudge

        base_by_id = {b["prompt_id"]: b["answer"] for b in base}
        if judge.protocol == "alpaca_eval":
            from prefloop.app.judging.alpaca_eval_judge import AlpacaEvalJudge

            return AlpacaEvalJudge(judge).judge([a["prompt"] for a in answers], [a["answer"] for a in answers],
                                                [base_by_id[a["prompt_id"]] for a in answers])
        return LLMJudge(judge).judge([a["prompt"] for a in answers], [a["answer"] for a in answers],
                                     [base_by_id[a["prompt_id"]] for a in answers])
    if judge_kind(judge.kind).on_driver:
        return driver_verdicts(judge, answers, base)
    return scalar_verdicts(_with_scorer(recipe, judge.as_scorer()), answers, base, f"eval judge ({judge.kind})")


def driver_verdicts(judge: JudgeConfig, answers: list[dict], base: list[dict]) -> list[dict[str, Any]]:
    """The verdicts of an eval judge that runs on the driver (``on_driver`` in the judge registry)."""
    if judge.kind == "ifeval":  # IFEval's per-instruction grades too, for the manifest's four figures
        from prefloop.app.judging.ifeval_judge import ifeval_verdicts

        return ifeval_verdicts(judge, answers, base)
    return function_verdicts(judge.function, answers, base)


def function_verdicts(function: str, answers: list[dict], base: list[dict]) -> list[dict[str, Any]]:
    """A ``function`` eval judge, called here on the driver: it scores the held-out answers only (``eval_limit``
    prompts), so starting a Ray Data actor just to call it would cost more than the call (the demo's gold judge
    runs in milliseconds). Same scorer class, same scores as the actor pool gives."""
    from prefloop.actors.scorers import FunctionScorer

    base_by_id = {b["prompt_id"]: b["answer"] for b in base}
    batch = {"prompt_id": [a["prompt_id"] for a in answers], "prompt": [a["prompt"] for a in answers],
             "candidates": [[a["answer"], base_by_id[a["prompt_id"]]] for a in answers]}
    scored = FunctionScorer(function)(batch).column("scores").to_pylist()  # a pyarrow Table, as Ray Data gets it
    verdicts = []
    for score, base_score in (map(float, s) for s in scored):
        verdicts.append({"score": score, "base_score": base_score, "preference": preference(score, base_score)})
    return verdicts


def reranker(recipe: Recipe) -> ScorerConfig:
    """PairRM for best-of-N: the eval judge if it is PairRM, else the training scorer (checked at recipe load)."""
    judge = recipe.eval.judge
    if judge is not None and judge_kind(judge.kind).pairwise:
        return judge.as_scorer()
    if judge_kind(recipe.scorer.kind).pairwise:
        return recipe.scorer
    raise ValueError("eval.best_of needs a PairRM reranker: set eval.judge.kind or scorer.kind to pairrm")


def best_of_answers(recipe: Recipe, rows: list[dict], pool: Any) -> list[dict]:
    """Per prompt: ``eval.best_of`` samples (the rollout's temperature / top_p), reranked by PairRM, the best one
    kept (ties go to the earlier sample), with every sample's PairRM score."""
    spec = sampling(recipe, "best_of")
    n = spec.n
    stages = [pooled_generator_step(recipe, pool, spec), scorer_step(_with_scorer(recipe, reranker(recipe)))]
    out = {r["prompt_id"]: r for r in run_steps(rows, stages, recipe.resources.wait_timeout_s,
                                                 f"eval: best-of-{n}")}
    answers = []
    for row in rows:
        r = out.get(row["prompt_id"])
        if r is None or len(r["candidates"]) != n:
            raise RuntimeError(f"eval: best-of-{n}: prompt_id {row['prompt_id']} did not come back with {n} samples")
        scores = [float(s) for s in r["scores"]]
        best = max(range(n), key=lambda i: (scores[i], -i))
        answers.append({"prompt_id": row["prompt_id"], "prompt": row["prompt"], "messages": row["messages"],
                        "answer": r["candidates"][best], "num_tokens": int(r["num_tokens"][best]),
                        "finish_reason": str(r["finish_reasons"][best]), "best_index": best,
                        "rerank_scores": scores})
    return answers

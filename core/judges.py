"""The judge kinds, each declared once: its scorer class, the class's arguments, its preflight check, its GPU.

A judge grades answers: as the training scorer (``scorer``) it scores the rollout's candidates, as the eval judge
(``eval.judge``) it compares each round's held-out answers with the base model's. The recipe's validation, the
preflight, the Ray Data scorer stages and the eval verdicts all ask ``judge_kind(name)``, so adding a kind is one
entry here (and its scorer class), not an ``if`` in four modules.

Pure: the scorer classes are named by import path and loaded only where they run (``load_class``).
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from prefloop.core.model_dirs import check_ranker_dir, model_dir_problems, tokenizer_problems
from prefloop.core.strict import RecipeError


class JudgeCheckError(RecipeError):
    """A judge that cannot run as configured; the message names the recipe key."""


def load_function(spec: str, key: str = "scorer.function") -> Callable[..., Any]:
    """Import ``module:function``; the error names the recipe ``key`` and the spec."""
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise JudgeCheckError(f"{key}: {spec!r} cannot be imported: {err}") from None
    if not callable(fn):
        raise JudgeCheckError(f"{key}: {spec!r} is not callable")
    return fn


def load_class(path: str) -> type:
    """The class named ``module:Class``."""
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _check_ranker(cfg: Any, key: str) -> None:
    try:
        backbone = check_ranker_dir(cfg.model)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{key}.model: {err}") from None
    problems = tokenizer_problems(backbone, f"{key}.model backbone")
    if problems:
        raise FileNotFoundError("; ".join(problems))


def _check_reward_model(cfg: Any, key: str) -> None:
    problems = model_dir_problems(cfg.model, f"{key}.model")
    if problems:
        raise FileNotFoundError("; ".join(problems))


def _check_function(cfg: Any, key: str) -> None:
    load_function(cfg.function, f"{key}.function")


class JudgeRequestError(RuntimeError):
    """An LLM judge's endpoint cannot be asked (its key is not set) or failed a request after its retries; the
    message names the key, or the URL and the reason."""


def endpoint_key(cfg: Any, key: str = "eval.judge") -> str | None:
    """The API key an LLM judge sends (from ``api_key_env``); None when it names no variable."""
    if not cfg.api_key_env:
        return None
    value = os.environ.get(cfg.api_key_env)
    if not value:
        raise JudgeRequestError(f"{key}.api_key_env: environment variable {cfg.api_key_env} is not set")
    return value


def _check_endpoint(cfg: Any, key: str) -> None:
    problems = [] if re.match(r"^https?://", cfg.base_url or "") else \
        [f"{key}.base_url {cfg.base_url!r}: not an http:// or https:// URL"]
    try:
        endpoint_key(cfg, key)
    except JudgeRequestError as err:
        problems.append(str(err))
    if getattr(cfg, "protocol", "prefloop") == "alpaca_eval":
        problems += _alpaca_eval_problems(cfg.annotator, key)
    if problems:
        raise JudgeRequestError("; ".join(problems))


def _alpaca_eval_problems(annotator: str, key: str) -> list[str]:
    """The installed alpaca_eval package has the annotator's config (found, not imported: core imports no
    third-party judge code)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("alpaca_eval")
    if spec is None or spec.origin is None:
        return [f"{key}.protocol 'alpaca_eval': the alpaca_eval package is not installed "
                "(pip install -e '.[alpaca-eval]')"]
    config = Path(spec.origin).parent / "evaluators_configs" / annotator / "configs.yaml"
    return [] if config.is_file() else [f"{key}.annotator {annotator!r}: alpaca_eval has no {config}"]


def _validate_ifeval_ids(cfg: Any, key: str) -> None:
    from prefloop.core.ifeval import check_ids  # probes the checkers: only for an ifeval judge

    check_ids(cfg.instruction_ids, f"{key}.instruction_ids")


def _check_instructions(cfg: Any, key: str) -> None:
    from prefloop.core.ifeval import check_ids, read_instructions

    try:
        read_instructions(cfg.instructions, check_ids(cfg.instruction_ids, f"{key}.instruction_ids"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{key}.instructions: {err}") from None
    except ValueError as err:
        raise JudgeCheckError(f"{key}.instructions: {err}") from None


@dataclass(frozen=True)
class JudgeKind:
    """One kind of judge.

    ``requires``: the config fields it cannot run without; ``scorer``: the class (``module:Class``) that scores
    a batch of candidates in a Ray Data stage, None for a judge that only compares in evaluation (``llm_judge``);
    ``kwargs``: that class's constructor arguments from the config; ``check``: the preflight, run on the driver
    before anything starts; ``gpu``: it takes the scorer GPUs of ``resources`` (a function never does);
    ``pairwise``: it compares candidates with each other, so it can rerank best-of-N; ``on_driver``: as the eval
    judge it runs in the driver (a few dozen answers are not worth an actor's start-up); ``validate``: what the
    recipe's validation checks beyond the required fields (an IFEval id this machine cannot grade)."""

    name: str
    requires: tuple[str, ...]
    scorer: str | None
    kwargs: Callable[[Any], dict[str, Any]]
    check: Callable[[Any, str], None]
    gpu: bool
    pairwise: bool = False
    on_driver: bool = False
    validate: Callable[[Any, str], None] = lambda cfg, key: None


JUDGE_KINDS: dict[str, JudgeKind] = {k.name: k for k in (
    JudgeKind("pairrm", ("model",), "prefloop.actors.scorers:PairRMScorer",
              lambda c: {"ranker_dir": c.model, "batch_size": c.batch_size,
                         "comparisons": getattr(c, "comparisons", "full")},
              _check_ranker, gpu=True, pairwise=True),
    JudgeKind("reward_model", ("model",), "prefloop.actors.scorers:RewardModelScorer",
              lambda c: {"model_dir": c.model, "chat_template": c.chat_template, "batch_size": c.batch_size,
                         "reward_head": c.reward_head.model_dump() if getattr(c, "reward_head", None) else None},
              _check_reward_model, gpu=True),
    JudgeKind("function", ("function",), "prefloop.actors.scorers:FunctionScorer",
              lambda c: {"function": c.function}, _check_function, gpu=False, on_driver=True),
    JudgeKind("llm_judge", ("base_url", "model_name"), None, lambda c: {}, _check_endpoint, gpu=False),
    JudgeKind("ifeval", ("instructions",), "prefloop.actors.ifeval_scorer:IFEvalScorer",
              lambda c: {"instructions": c.instructions, "instruction_ids": c.instruction_ids},
              _check_instructions, gpu=False, on_driver=True, validate=_validate_ifeval_ids),
)}

SCORER_KINDS = tuple(name for name, k in JUDGE_KINDS.items() if k.scorer is not None)


def judge_kind(name: str) -> JudgeKind:
    try:
        return JUDGE_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown judge kind {name!r} (known: {', '.join(JUDGE_KINDS)})") from None


def missing_fields(cfg: Any) -> list[str]:
    """The fields ``cfg``'s kind requires that it does not set."""
    return [f for f in judge_kind(cfg.kind).requires if not getattr(cfg, f, None)]


def check_judge(cfg: Any, key: str) -> None:
    """The preflight of the judge configured at recipe ``key`` (``scorer`` or ``eval.judge``): raises what it
    finds (FileNotFoundError for a model folder, RecipeError for a function, JudgeRequestError for a key)."""
    judge_kind(cfg.kind).check(cfg, key)


def judge_problems(cfg: Any, key: str) -> list[str]:
    """``check_judge``'s finding as a line for the preflight's list (empty when the judge can run)."""
    try:
        check_judge(cfg, key)
    except (OSError, ValueError, RuntimeError) as err:
        return [str(err)]
    return []

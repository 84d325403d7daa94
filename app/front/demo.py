"""``prefloop demo``: the demo recipe end to end on the embedded local Ray and the tiny offline models.

Builds the tiny assets if absent, runs the round loop of ``recipes/demo.yaml`` (which serves each round on Ray
Serve as it commits, ``loop.serve``), asks the served final round one question, and prints the per-round table
and where the report is.
"""

from __future__ import annotations

import logging
import time
from importlib.resources import files
from pathlib import Path

log = logging.getLogger(__name__)
# Found through package data (prefloop/recipes -> ../recipes), so a non-editable install (a cluster image) has it too.
DEMO_RECIPE = Path(str(files("prefloop") / "recipes" / "demo.yaml"))


def show_one_answer(run_dir: str, prompt: str, temperature: float, port: int) -> str:
    """Ask the last committed round one question on Ray Serve, then stop the app. The loop serves it already when
    it ran rounds with ``loop.serve``; otherwise (serving off, or every round committed before) it is served for
    the moment."""
    from prefloop.app.serving.serve import ask, is_serving, serve_run_dir, stop_serving

    if not is_serving():
        serve_run_dir(run_dir, port=port)
    try:
        return ask(prompt, temperature=temperature)
    finally:
        stop_serving()


def run_demo(overrides: list[str], allow_recipe_change: bool = False) -> int:
    from prefloop.app.front.preflight import require
    from prefloop.app.front.recipes import resolve_recipe
    from prefloop.app.watch import console

    started = time.perf_counter()
    recipe = resolve_recipe(str(DEMO_RECIPE), overrides)  # builds the tiny assets when absent
    require(recipe, "run")  # before Ray: every check the rounds make
    from prefloop.app.rounds.loop import run_loop

    rows = run_loop(recipe, allow_recipe_change)
    con = console.get()
    con.activity("serve")
    prompt = "Write a short note about rivers."
    # sampled as the demo's evaluation samples (loop.eval_temperature): the tiny model's greedy answers fall into
    # loops that no graded answer shows (README, "The two commands")
    temperature = recipe.loop.eval_temperature
    answer = show_one_answer(recipe.run_dir, prompt, temperature, recipe.loop.serve_port)
    con.end_activity()
    con.line(f"\nserved round {rows[-1]['round']} model on Ray Serve, asked {prompt!r} "
             f"(temperature {temperature:g}):\n  {answer}")
    con.summary(rows, Path(recipe.run_dir).resolve(), time.perf_counter() - started)
    return 0

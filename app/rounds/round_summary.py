"""A committed round's summary, built once from its stage manifests and handed to evaluation and telemetry.

The eval stage's manifest carries it (``pairs``, ``method``, swap seconds, stage timings, ``prompts_done``,
``tokens_per_s``, ``train_loss``), so ``rounds.jsonl``, the report and the dashboard gauges all read the same
numbers and nothing re-reads the run directory to rebuild them.
"""

from __future__ import annotations

from typing import Any

from prefloop.app.rounds.round import Round
from prefloop.app.storage.rundir import EVAL, MODEL, ROLLOUT, RunDir


def round_prompts(run: RunDir, round_idx: int) -> int:
    """Prompts the round used: rolled out (online), trained (offline) or stepped through (ReMax)."""
    if run.is_committed(round_idx, ROLLOUT):
        return int(run.manifest(round_idx, ROLLOUT)["counts"]["prompts_generated"])
    counts = run.manifest(round_idx, MODEL).get("counts", {})
    return int(counts.get("prompts", counts.get("examples", 0)))


def round_summary(rnd: Round, *, swap_s: float, serve_swap_s: float | None,
                  timings_s: dict[str, float]) -> dict[str, Any]:
    """What round ``rnd`` did, for its eval manifest."""
    run, round_idx = rnd.run, rnd.index
    model = run.manifest(round_idx, MODEL)
    counts, final = model.get("counts", {}), model.get("final_metrics", {})
    rollout = run.manifest(round_idx, ROLLOUT) if run.is_committed(round_idx, ROLLOUT) else None
    if rnd.method.on_policy:  # the workers swapped weights every step: report their last step's sync time
        pairs, swap_s = counts.get("prompts", 0), final.get("sync_s", swap_s)
    elif rollout is not None and rnd.recipe.train.data is None:
        pairs = rollout["counts"]["pairs"]
    else:
        pairs = counts.get("accepted", 0)
    tokens_per_s: dict[str, float] = {}
    if rollout is not None and rollout.get("throughput", {}).get("tokens_per_generator_s") is not None:
        tokens_per_s["rollout"] = rollout["throughput"]["tokens_per_generator_s"]
    if model.get("tokens_per_s") is not None:
        tokens_per_s["train"] = model["tokens_per_s"]
    before = run.manifest(round_idx - 1, EVAL).get("prompts_done", 0) if (
        round_idx > 0 and run.is_committed(round_idx - 1, EVAL)) else 0
    return {"pairs": pairs, "method": rnd.method.name, "swap_s": swap_s, "serve_swap_s": serve_swap_s,
            "timings_s": dict(timings_s), "prompts_done": before + round_prompts(run, round_idx),
            "tokens_per_s": tokens_per_s, "train_loss": final.get("loss")}

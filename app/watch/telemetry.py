"""Watching a run: Ray custom metrics (Prometheus / Grafana) and optional experiment tracking.

Two outlets, both fed by the same few calls from the round loop (and from the ReMax driver):

- Ray metrics (``ray.util.metrics`` gauges), exported by every Ray node on its metrics port, so Prometheus
  and the Ray dashboard's Grafana see them as ``ray_<name>``. Every gauge carries the tag ``run`` (the
  recipe's name). The names are fixed, dashboards are built on them::

      prefloop_round          last committed round
      prefloop_prompts_done   prompts rolled out so far (trained examples for offline rounds)
      prefloop_tokens_per_s   tag stage: rollout (generation) | train
      prefloop_pairs_kept     pairs (examples) trained in the round
      prefloop_reward_mean    mean judge score of the held-out answers
      prefloop_win_rate       win rate vs the base model on the held-out prompts
      prefloop_train_loss     the last training step's loss
      prefloop_swap_s         weight swap into the generators
      prefloop_stage          tag stage: 1 while it runs, else 0
      prefloop_remax_reward   tag kind: sample | greedy
      prefloop_remax_kl       KL to the reference
      prefloop_remax_step_s   tag part: generate | score | train | sync

  Gauges are only recorded while Ray is initialised (the loop calls ``Telemetry.start`` after ``init_ray``).
- The recipe's ``tracking`` section (``app/watch/tracking.py``): TensorBoard, MLflow or wandb.

The API: ``tel = Telemetry.start(recipe, run_root)``, ``tel.activity(name)``, ``tel.round_done(r, summary)``,
``tel.remax_step(step, metrics)``, ``tel.close()``. The loop owns the one instance and hands its methods to
whoever needs them (the ReMax driver gets ``tel.remax_step`` as its step callback); there is no global.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from prefloop.app.watch.tracking import Tracker, flat_numbers, number, open_tracker
from prefloop.core.config import Recipe

log = logging.getLogger(__name__)

GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "prefloop_round": ("Last committed round of the run.", ()),
    "prefloop_prompts_done": ("Prompts rolled out so far in the run (trained examples for offline rounds).", ()),
    "prefloop_tokens_per_s": ("Tokens per second of a stage (rollout: generation, train: training).", ("stage",)),
    "prefloop_pairs_kept": ("Preference pairs (or examples) trained in the last committed round.", ()),
    "prefloop_reward_mean": ("Mean judge score of the last round's held-out answers.", ()),
    "prefloop_win_rate": ("Win rate of the last round against the base model on held-out prompts.", ()),
    "prefloop_train_loss": ("Loss of the last training step of the last round.", ()),
    "prefloop_swap_s": ("Seconds to swap the new weights into the generators.", ()),
    "prefloop_stage": ("1 for the stage running now, 0 for the others.", ("stage",)),
    "prefloop_remax_reward": ("ReMax: mean reward of the sampled / greedy responses.", ("kind",)),
    "prefloop_remax_kl": ("ReMax: mean KL of the policy to the reference.", ()),
    "prefloop_remax_step_s": ("ReMax: seconds of one step's part.", ("part",)),
}
# round_done keys -> plain gauges (tokens_per_s is a {stage: value} mapping)
ROUND_GAUGES = {"round": "prefloop_round", "prompts_done": "prefloop_prompts_done", "pairs": "prefloop_pairs_kept",
                "mean_score": "prefloop_reward_mean", "win_rate": "prefloop_win_rate",
                "train_loss": "prefloop_train_loss", "swap_s": "prefloop_swap_s"}
REMAX_PARTS = ("generate", "score", "train", "sync")


class Telemetry:
    """Ray gauges plus the recipe's tracking backend for one run; see the module docstring."""

    def __init__(self, run_name: str, gauges: dict[str, Any] | None, tracker: Tracker | None):
        self.run_name, self.gauges, self.tracker = run_name, gauges, tracker
        self.current_stage: str | None = None
        self.stages_seen: set[str] = set()
        self.remax_offset: int | None = None

    @classmethod
    def start(cls, recipe: Recipe, run_root: str | Path) -> "Telemetry":
        """Gauges (when Ray is initialised) and the recipe's tracker."""
        tracker = open_tracker(recipe.tracking, recipe, Path(run_root))
        return cls(recipe.name, make_gauges(recipe.name), tracker)

    def _set(self, name: str, value: Any, **tags: str) -> None:
        v = number(value)
        if self.gauges is not None and v is not None:
            self.gauges[name].set(v, tags=tags or None)

    def activity(self, name: str) -> None:
        """The driver started activity ``name`` (rollout, train, swap, eval, ...): its ``prefloop_stage`` gauge is
        1, the previous one's 0."""
        if self.current_stage is not None and self.current_stage != name:
            self._set("prefloop_stage", 0, stage=self.current_stage)
        self.current_stage = name
        self.stages_seen.add(name)
        self._set("prefloop_stage", 1, stage=name)
        log.debug("stage %s", name)

    def round_done(self, round_idx: int, metrics: dict[str, Any]) -> None:
        """A committed round (its eval manifest, which carries the round summary): the gauges of ``ROUND_GAUGES``
        (and ``tokens_per_s: {stage: value}``) are set;
        every numeric value goes to the tracker under ``round/<key>`` at step ``round_idx``."""
        metrics = {"round": round_idx, **metrics}
        for key, gauge in ROUND_GAUGES.items():
            self._set(gauge, metrics.get(key))
        for stage_name, value in (metrics.get("tokens_per_s") or {}).items():
            self._set("prefloop_tokens_per_s", value, stage=stage_name)
        if self.tracker is not None:
            self.tracker.log(flat_numbers(metrics, "round/"), round_idx)

    def remax_step(self, step: int, metrics: dict[str, Any]) -> None:
        """A ReMax step. Keys: ``reward_sample``, ``reward_greedy``, ``kl``, ``generate_s``, ``score_s``,
        ``train_s``, ``sync_s`` (gauges) and any other numbers (``prompts_done``, ``loss``, ...: tracker only,
        ``prompts_done`` also its gauge); tracked under ``remax/<key>`` at step ``step``."""
        self._set("prefloop_remax_reward", metrics.get("reward_sample"), kind="sample")
        self._set("prefloop_remax_reward", metrics.get("reward_greedy"), kind="greedy")
        self._set("prefloop_remax_kl", metrics.get("kl"))
        for part in REMAX_PARTS:
            self._set("prefloop_remax_step_s", metrics.get(f"{part}_s"), part=part)
        self._set("prefloop_prompts_done", metrics.get("prompts_done"))
        if self.tracker is not None:
            self.tracker.log(flat_numbers(metrics, "remax/"), step)

    def close(self, failed: bool | None = None) -> None:
        """Stage gauges back to 0, the tracker closed (FAILED when called while an exception propagates,
        e.g. from a ``finally``, unless ``failed`` says otherwise)."""
        if failed is None:
            failed = sys.exc_info()[0] is not None
        for name in self.stages_seen:
            self._set("prefloop_stage", 0, stage=name)
        self.current_stage = None
        if self.tracker is not None:
            try:
                self.tracker.close(failed)
            except Exception:  # closing must not hide the run's own error
                log.exception("closing the tracking backend failed")
            self.tracker = None


def make_gauges(run_name: str) -> dict[str, Any] | None:
    """The fixed gauges, each with the default tag ``run``; None when Ray is not initialised."""
    import ray

    if not ray.is_initialized():
        return None
    from ray.util.metrics import Gauge

    gauges = {}
    for name, (description, tags) in GAUGES.items():
        gauges[name] = Gauge(name, description=description, tag_keys=("run", *tags))
        gauges[name].set_default_tags({"run": run_name})
    return gauges

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
- The recipe's ``tracking`` section: ``tensorboard`` (tensorboardX event files, default ``RUN_DIR/tensorboard``),
  ``mlflow`` (default: a local file store ``RUN_DIR/mlruns``, works offline) or ``wandb`` (mode from
  ``WANDB_MODE``). The library is imported only when chosen; a missing one is an error naming the recipe key
  and the pip package. A resumed run (same run directory) continues the same MLflow / wandb run
  (``RUN_DIR/tracking.json`` keeps its id).

The API: ``tel = Telemetry.start(recipe, run_root)``, ``tel.stage(name)``, ``tel.round_done(r, metrics)``,
``tel.remax_step(step, metrics)``, ``tel.close()``. ``Telemetry.start`` also makes the instance the active one, so
code far from the loop can call the module functions ``stage(...)`` / ``remax_step(...)``, no-ops when none is.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from prefloop.core.config import Recipe, RecipeError, TrackingConfig, dump_recipe

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
                "reward_mean": "prefloop_reward_mean", "win_rate": "prefloop_win_rate",
                "train_loss": "prefloop_train_loss", "swap_s": "prefloop_swap_s"}
REMAX_PARTS = ("generate", "score", "train", "sync")
PACKAGES = {"tensorboard": ("tensorboardX", "tensorboardX"), "mlflow": ("mlflow", "mlflow-skinny"),
            "wandb": ("wandb", "wandb")}
STATE_FILE = "tracking.json"

_active: "Telemetry | None" = None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as ``a/b`` names (strings, lists and None are left out)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        elif (v := _number(value)) is not None:
            out[f"{prefix}{key}"] = v
    return out


def import_backend(backend: str) -> Any:
    """The tracking library for ``backend``, imported now; a clear error naming the recipe key if missing."""
    module, package = PACKAGES[backend]
    try:
        return __import__(module)
    except ImportError as err:
        raise RecipeError(f"tracking.backend: '{backend}' needs the {module} package, which is not installed "
                          f"({err}); install it with `pip install {package}` or set tracking.backend: none") from None


class _Tracker:
    """One experiment-tracking backend: scalars by step, closed at the end."""

    def log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self, failed: bool) -> None:
        pass


class _TensorBoard(_Tracker):
    def __init__(self, cfg: TrackingConfig, recipe: Recipe, root: Path):
        tbx = import_backend("tensorboard")
        self.logdir = Path(cfg.uri) if cfg.uri else root / "tensorboard"
        self.writer = tbx.SummaryWriter(logdir=str(self.logdir), flush_secs=10)
        self.writer.add_text("recipe", "```\n" + dump_recipe(recipe) + "```", 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self, failed: bool) -> None:
        self.writer.close()


class _MLflow(_Tracker):
    def __init__(self, cfg: TrackingConfig, recipe: Recipe, root: Path, state: dict[str, Any]):
        uri = cfg.uri or (root / "mlruns").as_uri()
        if "://" not in uri and not uri.startswith(("file:", "databricks", "sqlite:")):
            uri = Path(uri).expanduser().resolve().as_uri()  # a plain path: a local file store
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked; it is the one store that needs no server or database.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow = import_backend("mlflow")
        self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        self.uri = uri
        name = cfg.experiment or recipe.name
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
        self.run_id = state.get("run_id") if state.get("backend") == "mlflow" and state.get("uri") == uri else None
        if self.run_id:
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(exp_id, run_name=recipe.name).info.run_id
            params = {k: str(v)[:500] for k, v in _flat_params(recipe.model_dump(mode="json")).items()}
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        self.state = {"backend": "mlflow", "uri": uri, "run_id": self.run_id}

    def log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class _Wandb(_Tracker):
    def __init__(self, cfg: TrackingConfig, recipe: Recipe, root: Path, state: dict[str, Any]):
        wandb = import_backend("wandb")
        run_id = state.get("run_id") if state.get("backend") == "wandb" else None
        self.run = wandb.init(project=cfg.experiment or recipe.name, name=recipe.name, dir=str(root), id=run_id,
                              resume="allow", config=recipe.model_dump(mode="json"))
        self.state = {"backend": "wandb", "run_id": self.run.id}

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def _flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Telemetry:
    """Ray gauges plus the recipe's tracking backend for one run; see the module docstring."""

    def __init__(self, run_name: str, gauges: dict[str, Any] | None, tracker: _Tracker | None):
        self.run_name, self.gauges, self.tracker = run_name, gauges, tracker
        self.current_stage: str | None = None
        self.stages_seen: set[str] = set()
        self.remax_offset: int | None = None

    @classmethod
    def start(cls, recipe: Recipe, run_root: str | Path) -> "Telemetry":
        """Gauges (when Ray is initialised) and the recipe's tracker; this instance becomes the active one."""
        global _active
        root = Path(run_root)
        tracker = open_tracker(recipe.tracking, recipe, root)
        tel = cls(recipe.name, make_gauges(recipe.name), tracker)
        _active = tel
        return tel

    def _set(self, name: str, value: Any, **tags: str) -> None:
        v = _number(value)
        if self.gauges is not None and v is not None:
            self.gauges[name].set(v, tags=tags or None)

    def stage(self, name: str) -> None:
        """The run entered stage ``name`` (rollout, train, swap, eval, ...): its gauge is 1, the previous one 0."""
        if self.current_stage is not None and self.current_stage != name:
            self._set("prefloop_stage", 0, stage=self.current_stage)
        self.current_stage = name
        self.stages_seen.add(name)
        self._set("prefloop_stage", 1, stage=name)
        log.debug("stage %s", name)

    def round_done(self, round_idx: int, metrics: dict[str, Any]) -> None:
        """A committed round: the gauges of ``ROUND_GAUGES`` (and ``tokens_per_s: {stage: value}``) are set;
        every numeric value goes to the tracker under ``round/<key>`` at step ``round_idx``."""
        metrics = {"round": round_idx, **metrics}
        for key, gauge in ROUND_GAUGES.items():
            self._set(gauge, metrics.get(key))
        for stage_name, value in (metrics.get("tokens_per_s") or {}).items():
            self._set("prefloop_tokens_per_s", value, stage=stage_name)
        if self.tracker is not None:
            self.tracker.log(_flat(metrics, "round/"), round_idx)

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
            self.tracker.log(_flat(metrics, "remax/"), step)

    def close(self, failed: bool | None = None) -> None:
        """Stage gauges back to 0, the tracker closed (FAILED when called while an exception propagates,
        e.g. from a ``finally``, unless ``failed`` says otherwise); no longer the active instance."""
        global _active
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
        if _active is self:
            _active = None


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


def open_tracker(cfg: TrackingConfig, recipe: Recipe, root: Path) -> _Tracker | None:
    """The recipe's tracking backend (None for ``none``); its id is kept in RUN_DIR/tracking.json for resumes."""
    if cfg.backend == "none":
        return None
    root.mkdir(parents=True, exist_ok=True)
    if cfg.backend == "tensorboard":
        tracker: _Tracker = _TensorBoard(cfg, recipe, root)
        log.info("tracking: TensorBoard event files in %s", tracker.logdir)
        return tracker
    state_path = root / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    tracker = _MLflow(cfg, recipe, root, state) if cfg.backend == "mlflow" else _Wandb(cfg, recipe, root, state)
    tmp = state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(tracker.state) + "\n")
    os.replace(tmp, state_path)
    log.info("tracking: %s run %s", cfg.backend, tracker.state["run_id"])
    return tracker


def round_metrics(run_root: str | Path, round_idx: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """What ``round_done`` takes, from a committed round's eval manifest and the run's files: pairs, reward
    (mean judge score), win rate, swap seconds, the rollout's and the training's tokens/s, the last training
    step's loss, prompts rolled out so far, and the round's stage timings."""
    root = Path(run_root)
    out: dict[str, Any] = {"pairs": manifest.get("pairs"), "reward_mean": manifest.get("mean_score"),
                           "win_rate": manifest.get("win_rate"), "win_rate_stderr": manifest.get("win_rate_stderr"),
                           "mean_length": manifest.get("mean_length"), "swap_s": manifest.get("swap_s"),
                           "serve_swap_s": manifest.get("serve_swap_s"), "timings_s": manifest.get("timings_s", {})}
    tokens_per_s: dict[str, float] = {}
    prompts = 0
    for r in range(round_idx + 1):
        rollout = _read_json(root / f"round_{r}" / "rollout" / "manifest.json")
        if rollout:
            prompts += rollout.get("counts", {}).get("prompts_generated", 0)
        else:
            prompts += (_read_json(root / f"round_{r}" / "model" / "manifest.json") or {}).get(
                "counts", {}).get("examples", 0)
        if r == round_idx and rollout:
            rate = rollout.get("throughput", {}).get("tokens_per_generator_s")
            if _number(rate) is not None:
                tokens_per_s["rollout"] = rate
    out["prompts_done"] = prompts
    steps = [m for m in _read_jsonl(root / "metrics.jsonl") if m.get("round") == round_idx and "step" in m]
    if steps:
        last = steps[-1]
        out["train_loss"] = last.get("loss")
        rates = [v for m in steps if (v := _number(m.get("tokens_per_s"))) is not None]
        if rates:
            tokens_per_s["train"] = sum(rates) / len(rates)
    out["tokens_per_s"] = tokens_per_s
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash: not a metric
            continue
    return rows


def current() -> Telemetry | None:
    """The active Telemetry (started and not closed), if any."""
    return _active


def stage(name: str) -> None:
    """``stage`` on the active Telemetry; nothing when none is active."""
    if _active is not None:
        _active.stage(name)


def remax_step(step: int, metrics: dict[str, Any]) -> None:
    """``remax_step`` on the active Telemetry; nothing when none is active."""
    if _active is not None:
        _active.remax_step(step, metrics)

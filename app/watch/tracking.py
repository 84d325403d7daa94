"""Experiment tracking: the recipe's ``tracking`` section as one small backend object.

``tensorboard`` (tensorboardX event files, default ``RUN_DIR/tensorboard``), ``mlflow`` (default: a local file
store ``RUN_DIR/mlruns``, works offline) or ``wandb`` (mode from ``WANDB_MODE``). The library is imported only
when chosen; a missing one is an error naming the recipe key and the pip package. A resumed run (same run
directory) continues the same MLflow / wandb run (``RUN_DIR/tracking.json`` keeps its id).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from prefloop.core.config import Recipe, RecipeError, TrackingConfig, dump_recipe

log = logging.getLogger(__name__)

PACKAGES = {"tensorboard": ("tensorboardX", "tensorboardX"), "mlflow": ("mlflow", "mlflow-skinny"),
            "wandb": ("wandb", "wandb")}
STATE_FILE = "tracking.json"


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def flat_numbers(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as ``a/b`` names (strings, lists and None are left out)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flat_numbers(value, f"{prefix}{key}/"))
        elif (v := number(value)) is not None:
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


class Tracker:
    """One experiment-tracking backend: scalars by step, closed at the end."""

    def log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self, failed: bool) -> None:
        pass


class _TensorBoard(Tracker):
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


class _MLflow(Tracker):
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
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class _Wandb(Tracker):
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


def open_tracker(cfg: TrackingConfig, recipe: Recipe, root: Path) -> Tracker | None:
    """The recipe's tracking backend (None for ``none``); its id is kept in RUN_DIR/tracking.json for resumes."""
    if cfg.backend == "none":
        return None
    root.mkdir(parents=True, exist_ok=True)
    if cfg.backend == "tensorboard":
        tracker: Tracker = _TensorBoard(cfg, recipe, root)
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

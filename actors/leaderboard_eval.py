"""lm-evaluation-harness (``lm_eval``) on one model folder: what the leaderboard step's Ray task runs on its node.

The model is loaded once (lm_eval's vLLM backend on a GPU node, its transformers backend on CPU) and each task
is run with its own few-shot count (lm_eval takes one count per call, and the leaderboard's differ per task).
The tasks' datasets come from where lm_eval's task YAMLs say (the hub cache of a cluster node, or local files
for a task under ``include_path``); nothing here downloads a model.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def model_args(spec: dict[str, Any], model_dir: str) -> dict[str, Any]:
    """lm_eval's model_args for ``model_dir``: the recipe's extras, with the policy's dtype unless they set one."""
    args = {"pretrained": model_dir, "dtype": spec["dtype"], **spec["model_args"]}
    if spec["backend"] == "hf":
        args.setdefault("device", "cuda" if spec["num_gpus"] > 0 else "cpu")
    return args


def load_model(spec: dict[str, Any], model_dir: str) -> Any:
    """lm_eval's LM object for ``model_dir`` (built once, used for every task)."""
    from lm_eval.api.registry import get_model

    return get_model(spec["backend"]).create_from_arg_obj(model_args(spec, model_dir),
                                                          {"batch_size": spec["batch_size"]})


def evaluate(spec: dict[str, Any], model_dir: str, log_samples: bool = False) -> dict[str, Any]:
    """Run ``spec["tasks"]`` (name -> few-shot count) on ``model_dir``; lm_eval's ``results``, ``n-shot``,
    ``n-samples``, ``versions``, ``higher_is_better`` and ``group_subtasks`` merged over the tasks (and ``samples`` with
    ``log_samples``), plus ``lm_eval_version``."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=spec["include_path"]) if spec["include_path"] else TaskManager()
    lm = load_model(spec, model_dir)
    merged: dict[str, Any] = {"results": {}, "n-shot": {}, "n-samples": {}, "versions": {}, "higher_is_better": {},
                              "group_subtasks": {}, "samples": {}, "lm_eval_version": getattr(lm_eval, "__version__", None)}
    for name, shots in spec["tasks"].items():
        log.info("lm_eval: %s, %d-shot, limit %s, on %s", name, shots, spec["limit"], model_dir)
        out = lm_eval.simple_evaluate(model=lm, tasks=[name], num_fewshot=shots, limit=spec["limit"],
                                      task_manager=manager, log_samples=log_samples,
                                      bootstrap_iters=spec.get("bootstrap_iters", 100000))
        if out is None:  # lm_eval returns None on ranks other than 0; this task runs one process
            raise RuntimeError(f"lm_eval returned no results for task {name}")
        for key in ("results", "n-shot", "n-samples", "versions", "higher_is_better", "group_subtasks"):
            merged[key].update(out.get(key) or {})
        if log_samples:
            merged["samples"].update(out.get("samples") or {})
    return merged


def run_task(spec: dict[str, Any], model: Any) -> dict[str, Any]:
    """The Ray task's body: the model (a shipped ``ModelRef`` or a path) copied to this node, then ``evaluate``."""
    from prefloop.actors.model_cache import local_model

    return evaluate(spec, local_model(model, "leaderboard"))

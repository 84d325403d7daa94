"""The Open LLM Leaderboard (v1) tasks as a recipe section (``eval.leaderboard``), and their figures per round.

The Archangel cards report the Open LLM Leaderboard's six tasks, run through lm-evaluation-harness (``lm_eval``)
with fixed few-shot counts and one metric each: ARC-challenge 25-shot acc_norm, HellaSwag 10-shot acc_norm, MMLU
5-shot acc, TruthfulQA mc2 0-shot, Winogrande 5-shot acc, GSM8k 5-shot exact match. ``CARD_TASKS`` names them
with lm_eval's task names and result keys (``metric,filter``); a recipe lists the tasks it runs with their
few-shot counts and, for the report, the card's figure beside each. Any other lm_eval task (e.g. the local
``tiny_arc`` of ``tinyworld/data/leaderboard``, read through ``include_path``) must name its metric.

``figures`` turns lm_eval's results into the eval manifest's keys: ``leaderboard`` (per task: ``metric``,
``num_fewshot``, ``score`` and ``stderr`` in percent, ``card``, ``items``) and ``leaderboard_average`` (the mean
score over the tasks run, in percent; the leaderboard's "Avg."). It fails when lm_eval ran a task with another
few-shot count than asked (lm_eval ignores the count for a task whose YAML fixes 0) or lacks the metric.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import Field, model_validator

from prefloop.core.strict import StrictModel


class CardTask(NamedTuple):
    label: str  # the leaderboard's column name
    num_fewshot: int  # the leaderboard's few-shot count
    metric: str  # lm_eval's result key: metric,filter


# lm_eval's names for the leaderboard v1 tasks; truthfulqa_mc2 reports its mc2 score as "acc", and GSM8k's
# exact match is read with the strict "#### N" answer filter, as the leaderboard's harness read it.
CARD_TASKS: dict[str, CardTask] = {
    "arc_challenge": CardTask("ARC", 25, "acc_norm,none"),
    "hellaswag": CardTask("HellaSwag", 10, "acc_norm,none"),
    "mmlu": CardTask("MMLU", 5, "acc,none"),
    "truthfulqa_mc2": CardTask("TruthfulQA", 0, "acc,none"),
    "winogrande": CardTask("Winogrande", 5, "acc,none"),
    "gsm8k": CardTask("GSM8k", 5, "exact_match,strict-match"),
}


class LeaderboardTask(StrictModel):
    """One lm_eval task: its few-shot count, the result key read, and the card's figure to show beside it."""

    num_fewshot: int = Field(ge=0, description="Few-shot examples per prompt (the leaderboard's: 25/10/5/0/5/5).")
    metric: str | None = Field(None, description="lm_eval result key 'metric,filter' (e.g. 'acc_norm,none'); "
                               "default: the leaderboard's for its six tasks, required for any other task.")
    card: float | None = Field(None, description="The model card's figure for this task, in percent (shown in the "
                               "report beside each round's). Default null.")


class LeaderboardConfig(StrictModel):
    """``eval.leaderboard``: lm_eval tasks run on every round's model, after the model is committed."""

    tasks: dict[str, LeaderboardTask] = Field(min_length=1, description="lm_eval task name -> its few-shot count "
                                              "(a number) or {num_fewshot, metric, card}.")
    include_path: str | None = Field(None, description="A folder of extra lm_eval task YAMLs (a local task such as "
                                     "'{data}/leaderboard' for tiny_arc). Default null.")
    limit: int | None = Field(None, ge=1, description="Score only the first N items of each task (a smoke test: "
                              "the figures are then not the leaderboard's). Default null = all.")
    backend: Literal["vllm", "hf"] = Field("vllm", description="lm_eval's model backend: vllm (a cluster GPU) or hf "
                                           "(transformers; the tiny CPU runs).")
    model_args: dict[str, str | int | float | bool] = Field(default_factory=dict, description="Extra lm_eval "
                                                             "model_args (e.g. tensor_parallel_size, max_model_len, "
                                                             "gpu_memory_utilization). dtype defaults to policy.dtype.")
    batch_size: int | Literal["auto"] = Field("auto", description="lm_eval's batch size.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs of the Ray task that runs lm_eval.")
    num_gpus: float = Field(1.0, ge=0, description="GPUs of the Ray task that runs lm_eval (0 on CPU).")
    timeout_s: float = Field(6 * 3600.0, gt=0, description="The longest wait for one round's tasks, in seconds.")

    @model_validator(mode="before")
    @classmethod
    def _counts_as_tasks(cls, data: Any) -> Any:
        """``tasks: {arc_challenge: 25}`` is short for ``{arc_challenge: {num_fewshot: 25}}``."""
        if isinstance(data, dict) and isinstance(data.get("tasks"), dict):
            data = {**data, "tasks": {name: {"num_fewshot": spec} if isinstance(spec, int) and not
                                      isinstance(spec, bool) else spec for name, spec in data["tasks"].items()}}
        return data

    @model_validator(mode="after")
    def _metric_known(self) -> LeaderboardConfig:
        for name, task in self.tasks.items():
            if task.metric is None and name not in CARD_TASKS:
                raise ValueError(f"tasks.{name}.metric is required: {name} is not one of the leaderboard's tasks "
                                 f"({', '.join(CARD_TASKS)}), so prefloop does not know which result to read")
        return self

    def metric(self, name: str) -> str:
        """The lm_eval result key read for task ``name``."""
        return self.tasks[name].metric or CARD_TASKS[name].metric


def task_label(name: str) -> str:
    """The leaderboard's column name of a task, or the task's own name."""
    return CARD_TASKS[name].label if name in CARD_TASKS else name


def subtasks(name: str, groups: dict[str, list[str]]) -> list[str]:
    """The tasks lm_eval ran for ``name``: itself, or a group's tasks (lm_eval's ``group_subtasks``), recursively."""
    if not groups.get(name):
        return [name]
    return [leaf for sub in groups[name] for leaf in subtasks(sub, groups)]


def figures(cfg: LeaderboardConfig, results: dict[str, Any]) -> dict[str, Any]:
    """The eval manifest's ``leaderboard`` and ``leaderboard_average`` from lm_eval's merged output
    (``results``, ``n-shot``, ``n-samples``, ``group_subtasks``; see the module docstring). Scores are percent, as on the cards."""
    per_task: dict[str, Any] = {}
    for name, task in cfg.tasks.items():
        metric = cfg.metric(name)
        got = results.get("results", {}).get(name)
        if got is None or metric not in got:
            have = sorted(k for k in (got or {}) if "," in k)
            raise ValueError(f"lm_eval's results for task {name} have no {metric!r} (they have: {have})")
        leaves = subtasks(name, results.get("group_subtasks") or {})
        for leaf in leaves:  # a group (mmlu): each of its tasks
            shots = results.get("n-shot", {}).get(leaf)
            if shots is not None and int(shots) != task.num_fewshot:
                of = f" (of {name})" if leaf != name else ""
                raise ValueError(f"lm_eval ran task {leaf}{of} {shots}-shot, not {task.num_fewshot}-shot as "
                                 f"eval.leaderboard.tasks.{name} asks (its task YAML fixes the count)")
        name_m, _, filt = metric.partition(",")
        stderr = got.get(f"{name_m}_stderr,{filt}")
        counts = [results.get("n-samples", {}).get(leaf, {}).get("effective") for leaf in leaves]
        per_task[name] = {
            "metric": metric, "num_fewshot": task.num_fewshot, "score": 100.0 * float(got[metric]),
            "stderr": None if not isinstance(stderr, (int, float)) else 100.0 * float(stderr),
            "card": task.card, "items": None if None in counts else sum(counts), "limit": cfg.limit,
        }
    scores = [t["score"] for t in per_task.values()]
    return {"leaderboard": per_task, "leaderboard_average": sum(scores) / len(scores)}

"""What the driver hands to each Ray Train worker: typed configs instead of a dict read by key.

``TorchTrainer`` passes ``train_loop_config`` (a dict) to every worker; prefloop puts one of these dataclasses
in it under ``"worker"`` (``as_loop_config``), and the worker reads it back with ``from_loop_config``. A missing or
misspelled field is then a TypeError on the driver, not a KeyError inside a remote worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefloop.core.train_config import TrainConfig


@dataclass
class TrainWorkerConfig:
    """One round's preference / SFT training, the same on every worker."""

    train: TrainConfig
    model_dir: Any  # the start model (HF directory, or a ModelRef the worker copies: actors/model_cache.py)
    seed: int
    total_steps: int
    dtype: str = "float32"  # policy.dtype: the weights' dtype (core/precision.py decides the compute dtype)
    ref_dir: Any = None  # the reference (a directory or a ModelRef); None when the method needs none
    kill_at_step: int | None = None  # tests only: the last rank exits once at this step
    fault_marker: str | None = None  # tests only: the file that says the fault already happened

    def as_loop_config(self) -> dict[str, Any]:
        return {"worker": self}

    @classmethod
    def from_loop_config(cls, config: dict[str, Any]) -> "TrainWorkerConfig":
        worker = config["worker"]
        if not isinstance(worker, cls):
            raise TypeError(f"train_loop_config['worker'] is a {type(worker).__name__}, not a {cls.__name__}")
        return worker


@dataclass
class RemaxWorkerConfig(TrainWorkerConfig):
    """A ReMax round: the training worker's config plus how to reach the generators and the scorer."""

    prompts: list[dict[str, Any]] = field(default_factory=list)  # tokenised prompt rows (see app.rollout)
    generators: list[str] = field(default_factory=list)  # names of the round loop's generator actors
    scorer: str = ""  # name of the scorer actor
    weights_board: str = ""  # name of this round's LatestWeights actor (default: "<scorer>-weights")
    timeout_s: float = 600.0  # every remote wait of a step
    sample_spec: dict[str, Any] = field(default_factory=dict)  # the sampled response's SampleSpec; step s adds s
    greedy_spec: dict[str, Any] = field(default_factory=dict)  # the greedy baseline's SampleSpec
    publish_dir: str | None = None  # checkpoints for Serve to follow (None: not serving)
    steps_file: str | None = None  # rank 0 appends each step's metrics here for the driver to follow
    kill_generator_at_step: int | None = None  # tests only: rank 0 kills its generator once at this step

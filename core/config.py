"""Typed, validated recipe config.

A recipe is one YAML file. It is loaded into these pydantic models, where unknown keys and bad values are
errors naming the key (``rollout.num_samples: Input should be greater than or equal to 2``). Each stage owns
its small model; ``Recipe`` composes them. Command-line overrides (``--set rollout.num_samples=8``) are
applied to the raw mapping before validation, so they are checked exactly like the file.

Paths may use two placeholders, expanded at load time:
``{assets}`` -> the tiny offline assets directory, ``{data}`` -> the prompt files shipped with prefloop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from prefloop.core.judge_config import EvalConfig, ScorerConfig
from prefloop.core.judges import judge_kind
from prefloop.core.methods import OFFLINE_METHODS
from prefloop.core.overrides import OverrideError, apply_overrides, apply_tiny_overrides, parse_overrides
from prefloop.core.strict import ChatTemplate, RecipeError, StrictModel
from prefloop.core.train_config import TrainConfig


class PolicyConfig(StrictModel):
    """The model being aligned: a Hugging Face directory loadable by transformers and vLLM."""

    model: str = Field(description="Path to the policy's HF directory (save_pretrained).")
    chat_template: ChatTemplate = Field("tokenizer", description="How prompts are rendered for the policy.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"


class DataConfig(StrictModel):
    """Where prompts come from and how records are read."""

    train: str = Field(description="JSONL, Parquet, or a local Hugging Face dataset directory.")
    eval: str | None = Field(None, description="Held-out prompts for evaluation (same formats).")
    prompt_field: str = "prompt"
    messages_field: str = "messages"
    id_field: str = "prompt_id"
    max_prompt_tokens: int = Field(256, ge=1, description="Prompts longer than this (templated) are rejected.")
    limit: int | None = Field(None, ge=1, description="Use only the first N accepted prompts (of the round's "
                              "partition, when partitioned).")
    round_offset: int = Field(0, ge=0, description="Round r reads partition r + round_offset: the number put for "
                              "'{round}' in data.train / train.data, or the index under data.partitions (e.g. 1 "
                              "for files numbered from 1, like the Snorkel card's train_iteration_1..3).")
    partitions: int | None = Field(None, ge=1, description="Split data.train into K disjoint partitions by a "
                                   "seeded hash of prompt_id (as `prefloop data prepare --partitions K`); round r "
                                   "reads partition r + round_offset. null = no split.")
    partition_seed: int = Field(0, description="Seed of the data.partitions hash (prepare's --seed).")
    reuse_prompts: bool = Field(False, description="Allow every online round to read the same prompts (no "
                                "'{round}' and no data.partitions). Off: a multi-round online recipe must give "
                                "each round its own prompts.")


class RolloutConfig(StrictModel):
    """Sampling with vLLM generator actors."""

    num_samples: int = Field(4, ge=2, description="Candidates per prompt (>= 2 to form a pair).")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(64, ge=1)
    seed: int | None = Field(0, description="Per-request seeds derive from this and the prompt_id; null = unseeded.")
    num_generators: int = Field(1, ge=1, description="vLLM actors in the pool.")
    batch_size: int = Field(16, ge=1, description="Prompts per generator call.")
    block_prompts: int = Field(1024, ge=1, description="Rows of a prompt file per Ray Data reader call: the rollout "
                               "reads its prompt files in pieces of this many rows (lines of a JSONL file), so "
                               "neither a reader nor the driver ever holds a whole file.")
    max_model_len: int = Field(512, ge=16)
    kv_cache_gb: float | None = Field(0.25, gt=0, description="vLLM KV-cache size; null = vLLM's default (GPU).")
    enforce_eager: bool = True
    tensor_parallel_size: int = Field(1, ge=1)


class SelectionConfig(StrictModel):
    """Turning scored candidates into DPO pairs and KTO examples."""

    tie_break: Literal["shortest", "first", "skip"] = Field(
        "shortest", description="Among equal best (or worst) scores: prefer the shorter best / longer worst, "
        "the first in sampling order, or skip the prompt.")
    min_margin: float = Field(0.0, ge=0.0, description="Skip a prompt whose best-worst margin is below this.")
    length_penalty: float = Field(0.0, ge=0.0, description="Score minus this x response tokens, against length bias.")


class LoopConfig(StrictModel):
    """The round loop (``prefloop run``): how many rounds, how each round is evaluated, what is served."""

    rounds: int = Field(3, ge=1, description="Rounds of rollout -> train -> publish -> evaluate.")
    eval_limit: int | None = Field(64, ge=1, description="Held-out prompts judged per round (data.eval).")
    eval_temperature: float = Field(0.0, ge=0.0, description="Sampling temperature of the evaluated answers "
                                    "(0 = greedy, the model's single best answer).")
    methods: list[Literal[OFFLINE_METHODS]] | None = Field(  # type: ignore[valid-type]
        None, description="Training method per round (e.g. Archangel's [sft, kto]); null = train.method always.")
    serve: bool = Field(False, description="Run the Ray Serve app and hot-swap each committed round into it.")
    serve_port: int = Field(8000, ge=1, le=65535)


class ResourcesConfig(StrictModel):
    """Ray resources, decided here once so nothing waits forever for a CPU on a small machine."""

    address: str | None = Field(None, description="Ray address; null = the job's cluster or a new local one.")
    local_num_cpus: int | None = Field(None, ge=1, description="Logical CPUs of a new local cluster.")
    generator_cpus: float = Field(1.0, gt=0)
    generator_gpus: float = Field(0.0, ge=0)
    scorer_cpus: float = Field(1.0, gt=0)
    scorer_gpus: float = Field(0.0, ge=0)
    wait_timeout_s: float = Field(900.0, gt=0, description="A remote wait (an actor call; a Ray Data step between "
                                  "two results) that gets nothing this long fails.")
    placement: dict[Literal["generator", "scorer", "train", "serve"], dict[str, float]] = Field(
        default_factory=dict, description="Custom Ray resources each kind of actor asks for, to pin it to the "
        "nodes that offer them (`ray start --resources`), e.g. {generator: {gen_pool: 1}}; default none.")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "stage_timeout_s" in data:
            raise ValueError("stage_timeout_s is now wait_timeout_s (the same bound, on every remote wait)")
        return data

    def custom(self, kind: str) -> dict[str, float]:
        """The custom resources of actors of ``kind`` (a copy; empty when not pinned)."""
        return dict(self.placement.get(kind, {}))


class TrackingConfig(StrictModel):
    """Experiment tracking beside Ray's metrics (see app/watch/telemetry.py); the library is imported only when chosen."""

    backend: Literal["none", "tensorboard", "mlflow", "wandb"] = Field(
        "none", description="none; tensorboard (event files, needs tensorboardX); mlflow (needs mlflow-skinny or "
        "mlflow); wandb (needs wandb; mode from WANDB_MODE, e.g. offline).")
    uri: str | None = Field(None, description="tensorboard: log dir (default RUN_DIR/tensorboard); mlflow: tracking "
                            "URI (default a file store in RUN_DIR/mlruns); wandb: not used (set WANDB_BASE_URL).")
    experiment: str | None = Field(None, description="MLflow experiment / wandb project; null = the recipe's name.")

    @model_validator(mode="after")
    def _uri_fits(self) -> "TrackingConfig":
        if self.backend == "wandb" and self.uri is not None:
            raise ValueError("tracking.uri is not used by the wandb backend (set WANDB_BASE_URL for a server)")
        return self


class Recipe(StrictModel):
    """A whole recipe: what one `prefloop` run does."""

    name: str
    run_dir: str = Field(description="Where rounds, data and models are written.")
    seed: int = 0
    assets: Literal["tiny", "none"] = Field("none", description="'tiny' builds the offline tiny models.")
    policy: PolicyConfig
    data: DataConfig
    rollout: RolloutConfig = RolloutConfig()
    scorer: ScorerConfig
    selection: SelectionConfig = SelectionConfig()
    loop: LoopConfig = LoopConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = Field(EvalConfig(), description="The eval judge and best-of-N evaluation (see EvalConfig).")
    train: TrainConfig | None = None

    @model_validator(mode="after")
    def _lengths_fit(self) -> "Recipe":
        if self.loop.methods is not None and len(self.loop.methods) != self.loop.rounds:
            raise ValueError(f"loop.methods has {len(self.loop.methods)} entries for loop.rounds = {self.loop.rounds}")
        if self.eval.best_of is not None and not any(
                judge_kind(k).pairwise for k in (self.scorer.kind, self.eval_judge_kind) if k is not None):
            raise ValueError("eval.best_of needs a PairRM reranker: set eval.judge.kind or scorer.kind to pairrm")
        self._rounds_have_own_prompts()
        need = self.data.max_prompt_tokens + self.rollout.max_tokens
        if need > self.rollout.max_model_len:
            raise ValueError(f"data.max_prompt_tokens + rollout.max_tokens = {need} exceeds "
                             f"rollout.max_model_len = {self.rollout.max_model_len}")
        ev = self.eval
        if ev.max_tokens is not None or ev.max_prompt_tokens is not None:
            need = (ev.max_prompt_tokens or self.data.max_prompt_tokens) + (ev.max_tokens or response_tokens(self))
            if need > self.rollout.max_model_len:
                raise ValueError(f"eval.max_prompt_tokens + eval.max_tokens (null: data.max_prompt_tokens, the "
                                 f"response length) = {need} exceeds rollout.max_model_len = "
                                 f"{self.rollout.max_model_len}")
        return self


    @property
    def eval_judge_kind(self) -> str | None:
        return self.eval.judge.kind if self.eval.judge is not None else None

    def _rounds_have_own_prompts(self) -> None:
        """A round never sees another round's prompts unless the recipe says so (data.reuse_prompts)."""
        d, rounds = self.data, self.loop.rounds
        if "{round}" in d.train and d.partitions is not None:
            raise ValueError("data.train has '{round}' and data.partitions is set: choose one way to partition")
        if d.partitions is not None and d.partitions < rounds + d.round_offset and not d.reuse_prompts:
            raise ValueError(f"data.partitions = {d.partitions} is too few for loop.rounds = {rounds} with "
                             f"data.round_offset = {d.round_offset} (or set data.reuse_prompts: true)")

    def check_round_prompts(self) -> None:
        """For the round loop: a round never sees another round's prompts unless the recipe says so."""
        d, offline = self.data, self.train is not None and (self.train.data is not None or self.train.method == "remax")
        partitioned = "{round}" in d.train or d.partitions is not None
        if self.loop.rounds > 1 and not offline and not partitioned and not d.reuse_prompts:
            raise RecipeError(f"data.train {d.train!r}: every online round would read the same prompts; put "
                              "'{round}' in the path, set data.partitions, or set data.reuse_prompts: true")


def response_tokens(recipe: Recipe) -> int:
    """The recipe's own response length, for rollout and evaluation of every method: ReMax samples (and so is
    evaluated at) ``train.max_response_len``; every other method trains on what the rollout generated, at
    ``rollout.max_tokens``."""
    if recipe.train is not None and recipe.train.method == "remax":
        return recipe.train.max_response_len
    return recipe.rollout.max_tokens


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """``raw["a"]["b"] = value`` for ``key`` ``"a.b"``, creating sections as needed."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"{key}: '{part}' is not a section")
    node[parts[-1]] = value


def _expand(value: Any, placeholders: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, replacement in placeholders.items():
            value = value.replace("{" + name + "}", replacement)
        return value
    if isinstance(value, dict):
        return {k: _expand(v, placeholders) for k, v in value.items()}
    return value


def _format_errors(path: str, err: ValidationError) -> str:
    lines = [f"{path}: invalid recipe"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_recipe(raw: dict[str, Any], source: str, placeholders: dict[str, str] | None = None) -> Recipe:
    """Validate a raw mapping (already overridden) into a Recipe; errors name ``source`` and each key."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    try:
        return Recipe.model_validate(_expand(raw, placeholders or {}))
    except ValidationError as err:
        raise RecipeError(_format_errors(source, err)) from None


def apply_tiny(raw: dict[str, Any], source: str) -> None:
    """Apply the recipe's own ``tiny:`` section (dotted key -> value), the ``--tiny`` switch that runs a real
    cluster recipe end to end on CPU with the tiny offline models and small sizes."""
    tiny = raw.get("tiny")
    if tiny is None and raw.get("assets") == "tiny":
        return  # already a tiny recipe (the demo)
    if not isinstance(tiny, dict) or not tiny:
        raise RecipeError(f"{source}: --tiny needs a 'tiny:' section of dotted.key: value overrides")
    for key, value in tiny.items():
        set_dotted(raw, str(key), value)


def load_recipe(path: str | Path, overrides: list[str] = (), placeholders: dict[str, str] | None = None,
                tiny: bool = False) -> Recipe:
    """Read a YAML recipe, apply its ``tiny:`` section (with ``tiny``), then ``--set`` overrides; validate."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    try:
        sets = parse_overrides(overrides, Recipe)  # checked before anything is applied (core/overrides.py)
        apply_tiny_overrides(raw, sets)
        if tiny:
            apply_tiny(raw, str(path))
        raw.pop("tiny", None)
        apply_overrides(raw, sets)
    except OverrideError as err:
        raise RecipeError(str(err)) from None
    return parse_recipe(raw, str(path), placeholders)


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML, saved into the run directory."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


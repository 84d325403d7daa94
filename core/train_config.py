"""Configuration of the training stage (``prefloop train RECIPE --round R``): one pydantic model, strict.

Unknown keys and bad values are errors naming the key, as everywhere in the recipe (``StrictModel``). Defaults
follow the public recipes where they agree (beta 0.1, lr 5e-7, 384/384 prompt/response tokens as in the
ReMax card); tests and the CPU demo override them with tiny-model values.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from prefloop.core.methods import METHODS
from prefloop.core.methods import method as method_of
from prefloop.core.strict import StrictModel

Method = Literal[tuple(METHODS)]  # type: ignore[valid-type]  # the registered methods (core/methods.py)


class LoraSettings(StrictModel):
    """LoRA adapters through peft; merged into the base weights when the round's model is saved."""

    r: int = Field(8, ge=1, description="Rank of the low-rank update.")
    alpha: float = Field(16.0, gt=0, description="Scale numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1,
        description="Module names (suffixes) that get adapters; Llama/Mistral attention projections by default.")


class RemaxSettings(StrictModel):
    """ReMax (Li et al. 2023): REINFORCE with the greedy response's reward as baseline. Defaults: the
    Mistral-7B-ReMax-v0.1 card (sampling 0.7 / 0.9, kl_ctl 0.1, full-step KL, reward clip 1.0)."""

    prompts_per_step: int = Field(64, ge=1, description="Prompts per optimizer step, over all workers (ours).")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of the sampled response.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling of the sampled response.")
    kl_ctl: float = Field(0.1, ge=0, description="Weight of the per-token KL penalty to the frozen reference.")
    kl_penalty: Literal["sampled", "full_step"] = Field(
        "full_step", description="sampled: log-ratio of the sampled tokens; full_step: full-vocabulary KL "
        "at every step (the card's kl_penalty: full_step).")
    kl_to_go: bool = Field(False, description="Penalise each step with the KL of the steps after it too.")
    reward_clip: float = Field(1.0, gt=0, description="Advantage = clip(r(sample) - r(greedy), +-reward_clip).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (null: all epochs).")
    sync_every_steps: int = Field(1, ge=1, description="Push the new weights to the generators every N steps "
                                  "(1 = strictly on-policy, as ReMax is).")


class TrainConfig(StrictModel):
    """How one round's policy is trained. Every field has a default; ``train: {}`` is DPO with LoRA off."""

    method: Method = Field("dpo", description="dpo (incl. cDPO / IPO), kto, sft, csft (Archangel's "
                           "conditional SFT with <|good|>/<|bad|> control tokens), or remax (on-policy RL).")
    remax: RemaxSettings = Field(RemaxSettings(), description="ReMax settings (method remax only).")
    beta: float = Field(0.1, gt=0, description="DPO/KTO inverse temperature: implicit reward = beta * log-ratio.")
    label_smoothing: float = Field(0.0, ge=0.0, le=0.5, description="cDPO: probability a preference is flipped.")
    ipo: bool = Field(False, description="IPO loss instead of sigmoid DPO (length-normalised log-probs).")
    desirable_weight: float = Field(1.0, gt=0, description="KTO lambda_D.")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO lambda_U.")
    lr: float = Field(5e-7, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null = no clipping.")
    epochs: int = Field(1, ge=1, description="Passes over the round's data.")
    micro_batch_size: int = Field(2, ge=1, description="Examples (pairs for DPO) per worker per forward pass.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step. Global batch = "
                            "micro_batch_size * grad_accum * num_workers.")
    max_prompt_len: int = Field(384, ge=2, description="Prompt tokens kept (the END of the prompt is kept).")
    max_response_len: int = Field(384, ge=1, description="Response tokens kept (the START is kept).")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of steps with linear warmup.")
    schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="Decay after warmup.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one per GPU when use_gpu).")
    use_gpu: bool = Field(False, description="One GPU per worker and NCCL; gloo on CPU otherwise.")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs each Ray Train worker asks for.")
    lora: LoraSettings | None = Field(None, description="LoRA settings, or null for full fine-tuning.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    packing: bool = Field(True, description="DPO/KTO and the reference pass: pack each micro-batch's sequences "
                          "into rows without padding (position ids restart per sequence; sdpa/eager attention, "
                          "else padded) and score response positions only. false: padded rows, as SFT is.")
    bf16: bool = Field(False, description="bfloat16 autocast where the hardware has it (warns and uses fp32 "
                       "otherwise); master weights stay float32.")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="ddp: a full copy per worker; fsdp: sharded "
                                             "parameters, for models that do not fit one GPU.")
    reference: Literal["previous", "base"] = Field(
        "previous", description="previous: the model this round starts from (the last round's output); "
        "base: always policy.model.")
    reference_mode: Literal["precomputed", "live"] = Field(
        "precomputed", description="precomputed: one no-grad pass before training writes reference log-probs "
        "into the data, so no reference model is held during training; live: every worker keeps one.")
    data: str | None = Field(None, description="null: this round's rollout output; or a prefs "
                             "(prompt/chosen/rejected), KTO (prompt/completion/label) or SFT (prompt/completion) "
                             "file: JSONL, Parquet, or a dataset directory.")
    checkpoint_every_steps: int = Field(50, ge=1, description="Ray Train checkpoint every N optimizer steps.")
    max_failures: int = Field(2, ge=0, description="Worker failures to recover from (from the last checkpoint).")
    seed: int | None = Field(None, description="Seed for data order and LoRA init; null = the recipe's seed.")
    timeout_s: float = Field(48 * 3600.0, gt=0, description="Wall-clock limit of one round's Ray Train run (all "
                             "retries included): past it the stage fails; its last checkpoint stays and a rerun "
                             "resumes from it.")
    log_every_steps: int = Field(10, ge=1, description="ray.train.report every N optimizer steps (each report can "
                                 "wait for the controller's poll, ~2 s); every step is in the metrics file anyway.")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.ipo and self.label_smoothing:
            raise ValueError("ipo and label_smoothing (cDPO) are different losses: set only one")
        if self.method != "dpo" and (self.ipo or self.label_smoothing):
            raise ValueError(f"ipo / label_smoothing apply to method 'dpo', not '{self.method}'")
        if self.reference_mode == "live" and not method_of(self.method).needs_reference:
            raise ValueError(f"method '{self.method}' has no reference model: reference_mode 'live' is meaningless")
        if self.method == "remax" and self.lora is not None:
            raise ValueError("method 'remax' trains the full model (as the ReMax card does): set lora to null")
        if method_of(self.method).on_policy and self.data is not None:
            raise ValueError("method 'remax' is on-policy: it samples its own data, so train.data must be null")
        if self.strategy == "fsdp" and self.lora is not None:
            raise ValueError("strategy 'fsdp' with lora is not supported: LoRA models fit one device, use 'ddp'")
        return self


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate before optimizer step ``step`` (0-based).

    Linear warmup from 1/(warmup+1) to 1 over ``warmup_steps``, then ``constant``, ``linear`` decay to 0 at
    ``total_steps``, or half-period ``cosine`` decay to 0.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    return int(math.ceil(cfg.warmup_ratio * total_steps))

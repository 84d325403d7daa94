"""The model side of training, shared by the train loop, the reference pass and ReMax: loading a policy (LoRA,
gradient checkpointing), encoding (prompt, response) batches, summed response log-probs under autocast, and
``ReferenceLogps``, the Ray Data actor that computes a frozen reference's log-probs once per round.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from prefloop.core.batching import encode_pairs
from prefloop.core.logprobs import sequence_logps
from prefloop.core.train_config import TrainConfig

log = logging.getLogger(__name__)


def wants_bos(tokenizer: Any) -> bool:
    """Whether tokenisation with special tokens starts with BOS (the templates' rule: tokenisation adds it)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [bos]


def encode(tokenizer: Any, prompts: Any, responses: Any, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    return encode_pairs(tokenizer, [str(p) for p in prompts], [str(r) for r in responses], cfg.max_prompt_len,
                        cfg.max_response_len, add_bos=wants_bos(tokenizer), padding_side="right")


def autocast(cfg: TrainConfig, device: torch.device) -> Any:
    if not cfg.bf16:
        return nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("bf16 asked for but this GPU has no bfloat16: training in float32")
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def seq_logps(model: Any, enc: dict[str, torch.Tensor], cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    """Summed (IPO: averaged) response log-probs [B] of an encoded batch."""
    ids, attn, mask = (enc[k].to(device) for k in ("input_ids", "attention_mask", "loss_mask"))
    with autocast(cfg, device):
        logits = model(input_ids=ids, attention_mask=attn).logits
    return sequence_logps(logits, ids, mask, average=cfg.ipo)


def load_model(model_dir: str, device: torch.device, trainable: bool, cfg: TrainConfig | None = None) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if not trainable:
        return model.to(device).eval().requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = cfg.lora
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
        if cfg.method == "csft":
            # the new control-token embeddings start random: train the embedding and head rows with the adapters
            for name, p in model.named_parameters():
                if "embed_tokens" in name or "lm_head" in name:
                    p.requires_grad_(True)
    return model.train()


class ReferenceLogps:
    """Ray Data actor: the frozen reference's log-probs of every example, computed once per round, no grad.

    Adds ``ref_chosen``/``ref_rejected`` (DPO) or ``ref_logps``/``ref_kl_logps`` (KTO) to each batch.
    """

    def __init__(self, model_dir: str, tokenizer_dir: str, train: dict[str, Any]):
        from transformers import AutoTokenizer

        self.cfg = TrainConfig.model_validate(train)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.model = load_model(model_dir, self.device, trainable=False)

    @torch.no_grad()
    def _logps(self, prompts: Any, responses: Any) -> np.ndarray:
        enc = encode(self.tokenizer, prompts, responses, self.cfg)
        return seq_logps(self.model, enc, self.cfg, self.device).float().cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = batch["prompt_text"]
        if self.cfg.method == "dpo":
            batch["ref_chosen"] = self._logps(prompts, batch["chosen"])
            batch["ref_rejected"] = self._logps(prompts, batch["rejected"])
        else:
            batch["ref_logps"] = self._logps(prompts, batch["completion"])
            batch["ref_kl_logps"] = self._logps(prompts, batch["kl_completion"])
        return batch

"""One small step function per training method: a micro-batch in, a loss and its metrics out (``STEPS``).

Used by the Ray Train worker (``actors/trainer.py``); the losses themselves are ``core/losses.py``. A step
reads the worker's model, reference, tokenizer and config, and adds its metrics to ``Stats`` (sums and counts,
reduced to means over micro-batches and workers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from prefloop.actors.train_model import autocast, batch_tokens, encode, seq_batch, seq_logps
from prefloop.core.losses import dpo_loss, kto_loss, sft_loss

if TYPE_CHECKING:
    from prefloop.actors.trainer import Worker


class Stats(dict):
    """name -> [sum, count] over micro-batches and workers; reduced to means for the metrics."""

    def add(self, name: str, total: torch.Tensor | float, count: torch.Tensor | float) -> None:
        entry = self.setdefault(name, [0.0, 0.0])
        entry[0] += float(total)
        entry[1] += float(count)


def _ref(batch: dict[str, np.ndarray], key: str, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(batch[key], dtype=np.float32), device=device)


def dpo_step(w: "Worker", batch: dict[str, np.ndarray], stats: Stats) -> tuple[torch.Tensor, int]:
    n, cfg = len(batch["prompt_text"]), w.cfg
    prompts = list(batch["prompt_text"]) * 2
    enc = seq_batch(w.tokenizer, prompts, list(batch["chosen"]) + list(batch["rejected"]), cfg, w.model)
    logps = seq_logps(w.model, enc, cfg, w.device)  # chosen and rejected in one forward pass
    if w.ref_model is not None:
        with torch.no_grad():
            ref = seq_logps(w.ref_model, enc, cfg, w.device)
        ref_c, ref_r = ref[:n], ref[n:]
    else:
        ref_c, ref_r = _ref(batch, "ref_chosen", w.device), _ref(batch, "ref_rejected", w.device)
    out = dpo_loss(logps[:n], logps[n:], ref_c, ref_r, cfg.beta, cfg.label_smoothing, cfg.ipo)
    stats.add("loss", out.losses.detach().sum(), n)
    stats.add("reward_chosen", out.chosen_rewards.sum(), n)
    stats.add("reward_rejected", out.rejected_rewards.sum(), n)
    stats.add("reward_accuracy", (out.chosen_rewards > out.rejected_rewards).float().sum(), n)
    stats.add("reward_margin", (out.chosen_rewards - out.rejected_rewards).sum(), n)
    return out.losses.mean(), batch_tokens(enc)


def kto_step(w: "Worker", batch: dict[str, np.ndarray], stats: Stats) -> tuple[torch.Tensor, int]:
    cfg, prompts = w.cfg, list(batch["prompt_text"])
    kl_enc = seq_batch(w.tokenizer, prompts, batch["kl_completion"], cfg, w.model)
    with torch.no_grad():  # z is detached: the mismatched pairs need no graph
        kl_logps = seq_logps(w.model, kl_enc, cfg, w.device)
    enc = seq_batch(w.tokenizer, prompts, batch["completion"], cfg, w.model)
    logps = seq_logps(w.model, enc, cfg, w.device)
    if w.ref_model is not None:
        with torch.no_grad():
            ref, ref_kl = (seq_logps(w.ref_model, e, cfg, w.device) for e in (enc, kl_enc))
    else:
        ref, ref_kl = _ref(batch, "ref_logps", w.device), _ref(batch, "ref_kl_logps", w.device)
    desirable = torch.as_tensor(np.asarray(batch["label"], dtype=bool), device=w.device)
    out = kto_loss(logps, ref, desirable, kl_logps, ref_kl, cfg.beta, cfg.desirable_weight,
                   cfg.undesirable_weight, reduce_fn=w.all_mean)
    n, good = len(prompts), desirable.float()
    stats.add("loss", out.losses.detach().sum(), n)
    stats.add("kto_z", out.z, 1)
    stats.add("reward_chosen", (out.rewards * good).sum(), good.sum())
    stats.add("reward_rejected", (out.rewards * (1 - good)).sum(), (1 - good).sum())
    # KTO "accuracy": the implicit reward sits on the label's side of the reference point beta * z
    right = torch.where(desirable, out.rewards > cfg.beta * out.z, out.rewards < cfg.beta * out.z)
    stats.add("reward_accuracy", right.float().sum(), n)
    return out.losses.mean(), batch_tokens(enc)


def sft_step(w: "Worker", batch: dict[str, np.ndarray], stats: Stats) -> tuple[torch.Tensor, int]:
    enc = encode(w.tokenizer, batch["prompt_text"], batch["completion"], w.cfg)
    ids, attn, mask = (enc[k].to(w.device) for k in ("input_ids", "attention_mask", "loss_mask"))
    with autocast(w.cfg, w.device, w.model):
        logits = w.model(input_ids=ids, attention_mask=attn).logits
    out = sft_loss(logits, ids, mask)
    stats.add("loss", out.nll_sum.detach().sum(), out.n_tokens.sum())  # per-token NLL
    return out.token_mean(), int(attn.sum())


STEPS = {"dpo": dpo_step, "kto": kto_step, "sft": sft_step}  # by a method's step name (core/methods.py)

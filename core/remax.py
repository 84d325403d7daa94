"""ReMax's pure pieces: which prompts each step takes, how sampled token ids become a training batch, and the
per-step summary. The advantage and the loss themselves are ``core.losses.remax_advantage`` / ``remax_loss``.

ReMax (Li et al. 2023, arXiv 2310.10505) takes, per step, a batch of prompts; the current policy answers each
twice (one sample, one greedy decode); the reward model scores both; the greedy reward is the baseline.
No Ray, vLLM or model code here: the Ray Train worker (``actors/remax_worker.py``) wires these to a model.
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import torch


def remax_total_steps(n_prompts: int, epochs: int, prompts_per_step: int, max_steps: int | None = None) -> int:
    """Optimizer steps of a ReMax run: every epoch visits every prompt once, ``prompts_per_step`` at a time."""
    if n_prompts <= 0:
        raise ValueError("ReMax needs at least one prompt")
    steps = epochs * math.ceil(n_prompts / prompts_per_step)
    return min(steps, max_steps) if max_steps is not None else steps


def step_prompts(n_prompts: int, step: int, prompts_per_step: int, seed: int) -> list[int]:
    """Indices of the prompts of ``step``: a seeded shuffle per epoch, cut into steps of ``prompts_per_step``.

    An epoch's last step, when short, is filled from the start of that epoch's order, so every step (and every
    worker's share) has the same size and no prompt is left out. Pure in (step, seed), so a worker that
    restarts from a checkpoint takes exactly the prompts it would have taken.
    """
    per_epoch = math.ceil(n_prompts / prompts_per_step)
    epoch, within = divmod(step, per_epoch)
    order = list(range(n_prompts))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    picked = order[within * prompts_per_step:(within + 1) * prompts_per_step]
    while len(picked) < prompts_per_step:
        picked += order[: prompts_per_step - len(picked)]
    return picked


def worker_share(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Rank ``rank``'s part of a step's prompts: every ``world``-th one, starting at ``rank``."""
    return list(items[rank::world])


def pack_sequences(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                   max_prompt_len: int, max_response_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Prompt + sampled response token ids -> right-padded ``input_ids``, ``attention_mask``, ``loss_mask``.

    The sampled ids are used as they are (no decode and re-encode, which can change the tokens and so the
    log-probs). Too long: the END of the prompt and the START of the response are kept. ``loss_mask`` is 1 on
    response tokens; ``loss_mask[:, 1:]`` is the step mask of ``token_logps``. Shapes: [B, T].
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    rows = [(list(p)[-max_prompt_len:], list(r)[:max_response_len]) for p, r in zip(prompt_ids, response_ids)]
    width = max((len(p) + len(r) for p, r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    loss = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        if not p:
            raise ValueError(f"row {i}: empty prompt")
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        attn[i, :n] = 1
        loss[i, len(p):n] = 1
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def step_summary(sample_rewards: Sequence[float], greedy_rewards: Sequence[float], advantages: Sequence[float],
                 seq_kl: Sequence[float], lengths: Sequence[int]) -> dict[str, list[float]]:
    """Per-step sums and counts (``name -> [sum, count]``) so workers can add theirs before averaging."""
    def pair(values: Sequence[float]) -> list[float]:
        return [float(math.fsum(float(v) for v in values)), float(len(values))]

    return {"reward_sample": pair(sample_rewards), "reward_greedy": pair(greedy_rewards),
            "advantage": pair(advantages), "kl": pair(seq_kl), "response_len": pair(lengths),
            "sample_beats_greedy": pair([float(s > g) for s, g in zip(sample_rewards, greedy_rewards)])}

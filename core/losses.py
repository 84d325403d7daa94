"""Training losses of prefloop as pure functions: DPO / cDPO / IPO, KTO, SFT and ReMax.

Every function takes log-probabilities (see ``logprobs.py``) and returns per-example tensors; reducing them
(mean over the batch, over tokens, across workers) is the caller's choice. No ray, no vllm, no torch.distributed:
anything that needs the other workers comes in as a callable. The settings (beta, label_smoothing, ipo, the KTO
weights, kl_ctl, kl_penalty, kl_to_go) have no defaults here: ``core/train_config.py`` owns them, and callers pass them.

Notation: for a prompt x and response y, ``logp = log pi_theta(y|x)`` and ``ref = log pi_ref(y|x)`` are
summed response-token log-probabilities [B]; the implicit reward is ``r = beta * (logp - ref)``.

DPO  (Rafailov et al. 2023, arXiv 2305.18290), with h = (logp_c - logp_r) - (ref_c - ref_r):
    loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
    eps = label_smoothing = 0 is DPO; 0 < eps <= 0.5 is conservative DPO (Mitchell 2023, "A note on DPO with
    noisy preferences"): the preference label is taken to be flipped with probability eps.
IPO  (Azar et al. 2023, arXiv 2310.12036), TRL's convention: loss = (h - 1 / (2 * beta))**2.
    The paper's h uses length-normalised log-probabilities, as TRL does: pass ``sequence_logps(average=True)``.
KTO  (Ethayarajh et al. 2024, arXiv 2402.01306):
    z     = max(0, mean_j [log pi_theta(y'_j|x_j) - log pi_ref(y'_j|x_j)])   over mismatched pairs (x_j, y'_j),
            averaged across workers, never back-propagated (detached)
    loss  = lambda_D * (1 - sigmoid(beta * (r_logratio - z)))   for desirable y
          = lambda_U * (1 - sigmoid(beta * (z - r_logratio)))   for undesirable y
    with r_logratio = logp - ref. This is the paper's lambda_y - v(x, y), i.e. TRL's KTOTrainer loss.
SFT  negative log-likelihood of the response tokens: loss = -sum_t log pi_theta(y_t | x, y_<t).
ReMax (Li et al. 2023, arXiv 2310.10505), on one sampled response y and one greedy response y_hat per prompt:
    A      = clip(R(x, y) - R(x, y_hat), -reward_clip, reward_clip)
    G_t    = A - kl_ctl * k_t                       (the per-token return, detached)
    loss   = -sum_t G_t * log pi_theta(y_t | x, y_<t)    averaged over response tokens by the caller
    k_t    = log pi_theta(y_t|s_t) - log pi_ref(y_t|s_t)        ("sampled": single-sample KL estimate)
           = KL(pi_theta(.|s_t) || pi_ref(.|s_t))              ("full_step": exact KL over the vocabulary)

Where ReMax here follows / departs from the ReMax reference code (liziniu/ReMax, built on DeepSpeed-Chat):
- The KL enters the *reward* (per-token return G_t), as there, not the loss as a separate differentiable term;
  G_t is detached, so the KL only acts through the REINFORCE weight. In ``full_step`` mode the exact KL is
  likewise a detached per-token penalty (our reading of the model card's ``kl_penalty full_step``; the code
  version with that flag was not available to check).
- As there, step t's return holds only step t's own KL term, not the sum of the KL of later steps (the
  reward-to-go a textbook REINFORCE would use). ``kl_to_go=True`` gives the reward-to-go form.
- gamma is fixed at 1 (the reference code's default); the reward clip applies to the difference R - R_hat.
- The token average is left to the caller: ``RemaxOutput.token_mean()`` is the reference code's
  sum(-G * logp * mask) / sum(mask) over the batch.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F

from prefloop.core.logprobs import token_logps


class DPOOutput(NamedTuple):
    losses: torch.Tensor  # [B]
    chosen_rewards: torch.Tensor  # [B] beta * (logp_c - ref_c), detached
    rejected_rewards: torch.Tensor  # [B] beta * (logp_r - ref_r), detached


class KTOOutput(NamedTuple):
    losses: torch.Tensor  # [B], already weighted by lambda_D / lambda_U
    z: torch.Tensor  # 0-d reference point, detached, >= 0
    rewards: torch.Tensor  # [B] beta * (logp - ref), detached


class SFTOutput(NamedTuple):
    nll_sum: torch.Tensor  # [B] summed negative log-likelihood of the response tokens
    n_tokens: torch.Tensor  # [B] response tokens per example

    def token_mean(self) -> torch.Tensor:
        """Mean NLL per response token over the whole batch (what HF's causal-LM loss computes)."""
        return self.nll_sum.sum() / self.n_tokens.sum().clamp(min=1)

    def example_mean(self) -> torch.Tensor:
        """Mean over examples of each example's per-token NLL (every example weighs the same)."""
        return (self.nll_sum / self.n_tokens.clamp(min=1)).mean()


class RemaxOutput(NamedTuple):
    loss_sum: torch.Tensor  # [B] sum_t -G_t * logp_t over response tokens
    n_tokens: torch.Tensor  # [B]
    returns: torch.Tensor  # [B, L] G_t, 0 outside the response, detached
    kl: torch.Tensor  # [B] sum_t k_t: the sequence KL estimate, for metrics

    def token_mean(self) -> torch.Tensor:
        """The ReMax reference loss: sum over all response tokens of the batch / number of those tokens."""
        return self.loss_sum.sum() / self.n_tokens.sum().clamp(min=1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float,
    ipo: bool,
) -> DPOOutput:
    """Sigmoid DPO, conservative DPO (``label_smoothing`` > 0) or IPO (``ipo=True``); all inputs [B].

    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    DPO/cDPO: -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h);   IPO: (h - 1 / (2 beta))^2.
    Returns per-example losses [B] and the implicit rewards of chosen and rejected (detached, for metrics).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    if ipo and label_smoothing:
        raise ValueError("label_smoothing (cDPO) and ipo are different losses: choose one")
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    if ipo:
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        # logsigmoid, not log(sigmoid), so large margins do not underflow to log(0).
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return DPOOutput(losses, chosen_rewards, rejected_rewards)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    policy_kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
    reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> KTOOutput:
    """KTO loss with the reference point z from mismatched pairs.

    Args:
        policy_logps, ref_logps: [B] log-probs of each example's own completion.
        desirable: [B] bool, True for desirable completions.
        policy_kl_logps, ref_kl_logps: [M] log-probs of mismatched (prompt, completion) pairs of the same
            micro-batch (TRL pairs prompt i with completion i - 1: ``batching.mismatched_completions``).
            Only their detached mean is used; computing them under ``torch.no_grad()`` saves memory.
        reduce_fn: averages a 0-d tensor across workers (e.g. an all-reduce mean the trainer supplies);
            identity when None. Called on every worker, before the clamp, as TRL does.

    z = max(0, reduce_fn(mean(policy_kl_logps - ref_kl_logps))), detached.
    desirable:   lambda_D * (1 - sigmoid(beta * (logp - ref - z)))
    undesirable: lambda_U * (1 - sigmoid(beta * (z - (logp - ref))))
    Returns per-example losses [B] (weighted), z (0-d) and the implicit rewards beta (logp - ref) [B].
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if policy_kl_logps.numel() == 0:
        raise ValueError("KTO needs mismatched pairs to estimate z; got none")
    z = (policy_kl_logps - ref_kl_logps).detach().float().mean()
    if reduce_fn is not None:
        z = reduce_fn(z)
    z = z.detach().clamp(min=0.0)
    logratio = policy_logps - ref_logps
    desirable = desirable.to(torch.bool)
    gain = desirable_weight * (1.0 - torch.sigmoid(beta * (logratio - z)))
    loss_averse = undesirable_weight * (1.0 - torch.sigmoid(beta * (z - logratio)))
    losses = torch.where(desirable, gain, loss_averse)
    return KTOOutput(losses, z, beta * logratio.detach())


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> SFTOutput:
    """Negative log-likelihood of the response tokens only.

    Args: logits [B, T, V], labels [B, T] (input_ids), loss_mask [B, T] (1 on response tokens).
    nll_sum[b] = -sum_t log p(labels[b, t+1] | <= t) over response tokens; ``.token_mean()`` reduces it.
    Conditional SFT is the same loss on prompts carrying <|good|>/<|bad|> control tokens.
    """
    per_token = token_logps(logits, labels, loss_mask)
    n_tokens = loss_mask[:, 1:].sum(dim=-1)
    return SFTOutput(-per_token.sum(dim=-1), n_tokens)


def remax_advantage(sample_rewards: torch.Tensor, greedy_rewards: torch.Tensor, reward_clip: float) -> torch.Tensor:
    """ReMax advantage [B]: clip(R(sample) - R(greedy), -reward_clip, reward_clip); inputs [B], detached."""
    if reward_clip <= 0:
        raise ValueError(f"reward_clip must be > 0, got {reward_clip}")
    diff = (sample_rewards - greedy_rewards).detach()
    return diff.clamp(min=-reward_clip, max=reward_clip)


def remax_returns(
    advantages: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_ctl: float, kl_to_go: bool
) -> torch.Tensor:
    """Per-token returns [B, L]: G_t = A - kl_ctl * k_t on response steps, 0 elsewhere; all detached.

    Args: advantages [B]; kl [B, L] per-token KL estimate k_t; mask [B, L] response steps.
    kl_to_go: use the KL of steps t..end (reward-to-go) instead of step t's own KL (the ReMax code).
    """
    step = mask.to(torch.bool)
    zero = torch.zeros_like(kl)
    kl = torch.where(step, kl.detach(), zero)  # where: a non-finite value on a padded step stays out
    if kl_to_go:
        # reverse cumulative sum along time: sum_{s >= t} k_s
        kl = kl.flip(-1).cumsum(-1).flip(-1)
    returns = advantages.detach().view(-1, 1).to(kl.dtype) - kl_ctl * kl
    return torch.where(step, returns, zero)


def remax_loss(
    policy_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    kl_ctl: float,
    kl_penalty: Literal["sampled", "full_step"],
    kl_to_go: bool,
    ref_logps: torch.Tensor | None = None,
    full_kl: torch.Tensor | None = None,
) -> RemaxOutput:
    """REINFORCE loss of ReMax with a per-token KL penalty to the frozen reference.

    Args:
        policy_logps: [B, L] per-token log-probs of the sampled response (``token_logps``), with grad.
        advantages: [B] from ``remax_advantage``.
        mask: [B, L] response steps (``loss_mask[:, 1:]``).
        kl_ctl: KL weight (0.1 in the Mistral-7B-ReMax recipe).
        kl_penalty: "sampled": k_t = logp_t - ref_logp_t (needs ``ref_logps`` [B, L]);
            "full_step": k_t = full-vocabulary KL at step t (needs ``full_kl`` [B, L] from ``logprobs.full_kl``).
        kl_to_go: see ``remax_returns``.

    loss_sum[b] = -sum_t G_t * logp_t * mask_t with G_t = A - kl_ctl * k_t detached.
    """
    if kl_penalty == "sampled":
        if ref_logps is None:
            raise ValueError("kl_penalty='sampled' needs ref_logps")
        kl = policy_logps.detach() - ref_logps.detach()
    elif kl_penalty == "full_step":
        if full_kl is None:
            raise ValueError("kl_penalty='full_step' needs full_kl")
        kl = full_kl.detach()
    else:
        raise ValueError(f"kl_penalty must be 'sampled' or 'full_step', got {kl_penalty!r}")
    if kl.shape != policy_logps.shape or mask.shape != policy_logps.shape:
        shapes = [tuple(x.shape) for x in (policy_logps, kl, mask)]
        raise ValueError(f"policy_logps, KL and mask must have one shape [B, L], got {shapes}")
    step_mask = mask.to(torch.bool)
    returns = remax_returns(advantages, kl, mask, kl_ctl, kl_to_go)
    # where, not multiply: a -inf log-prob on a masked step must not turn into nan.
    weighted = torch.where(step_mask, -returns * policy_logps, torch.zeros_like(policy_logps))
    seq_kl = torch.where(step_mask, kl, torch.zeros_like(kl)).sum(-1)
    return RemaxOutput(weighted.sum(-1), mask.sum(-1), returns, seq_kl)

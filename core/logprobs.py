"""Log-probabilities of responses under a causal LM: the shared input of every loss in ``losses.py``.

Conventions (one place, so every loss agrees):

- A batch is ``input_ids [B, T]`` = prompt + response, padded on either side, with ``attention_mask [B, T]``
  (1 = real token) and a ``loss_mask [B, T]`` that is 1 on response tokens only (see ``build_response_mask``).
- The model's ``logits [B, T, V]`` at position t predict the token at t + 1, so every per-token result here has
  length T - 1 and index t means "the prediction of labels[:, t + 1]":

      token_logp[b, t] = log softmax(logits[b, t])[labels[b, t + 1]] * loss_mask[b, t + 1]

- The sequence log-probability of the response is the sum over its tokens (prompt and padding masked):

      log pi(y | x) = sum_t token_logp[b, t]                 (``average=True`` divides by the token count,
                                                              the length-normalised variant IPO uses)

- The full-vocabulary KL at every response step (ReMax ``full_step`` penalty):

      KL_t = sum_v pi(v | s_t) * (log pi(v | s_t) - log pi_ref(v | s_t))

Padding side does not matter to any of this as long as the model itself handles padding (position ids from
the attention mask for left padding): masks select tokens by content, never by absolute position.
"""

from __future__ import annotations

import torch


def _check_shapes(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> None:
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        shapes = (tuple(logits.shape), tuple(labels.shape))
        raise ValueError(f"expected logits [B, T, V] and labels [B, T], got {shapes[0]} and {shapes[1]}")
    if mask is not None and mask.shape != labels.shape:
        raise ValueError(f"loss_mask must be [B, T] like labels {tuple(labels.shape)}, got {tuple(mask.shape)}")


def token_logps(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token log-probabilities of ``labels`` under ``logits``, shifted by one.

    Args:
        logits: [B, T, V] raw model outputs (any float dtype; computed in float32).
        labels: [B, T] token ids, usually ``input_ids``; ids at masked positions may be anything (e.g. -100).
        loss_mask: optional [B, T], 1 where the token counts. Masked positions come back as exactly 0.

    Returns:
        [B, T - 1] float32, entry t = log p(labels[:, t + 1] | tokens <= t).
    """
    _check_shapes(logits, labels, loss_mask)
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = None if loss_mask is None else loss_mask[:, 1:].bool()
    if mask is not None:
        # Masked labels may be -100 or a pad id beyond V: gather a safe id there, the value is zeroed below.
        targets = torch.where(mask, targets, torch.zeros_like(targets))
    # gather - logsumexp keeps one [B, T, V] temporary instead of the two a full log_softmax would make.
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    logps = picked - torch.logsumexp(logits, dim=-1)
    if mask is not None:
        # where (not multiply) so that an inf/nan at a masked position cannot leak into sums or gradients.
        logps = torch.where(mask, logps, torch.zeros_like(logps))
    return logps


def response_token_counts(loss_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] loss mask -> [B] number of predicted response tokens (position 0 is never predicted)."""
    return loss_mask[:, 1:].sum(dim=-1)


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """Sum (or mean) of response-token log-probabilities per sequence.

    Args:
        logits: [B, T, V]; labels: [B, T]; loss_mask: [B, T] (1 on response tokens).
        average: divide by the number of response tokens (length-normalised log-prob, TRL's IPO convention).

    Returns:
        [B] float32. A row with no response token gives 0.
    """
    per_token = token_logps(logits, labels, loss_mask)
    total = per_token.sum(dim=-1)
    if not average:
        return total
    return total / response_token_counts(loss_mask).clamp(min=1).to(total.dtype)


def build_response_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor
) -> torch.Tensor:
    """Mask of response tokens for prompt + response rows padded on either side.

    Counts real tokens (``attention_mask == 1``) from the start of each row: the first ``prompt_lengths[b]``
    of them are the prompt, the rest the response. Because it counts real tokens, not absolute positions,
    left padding, right padding and a mix of both give the same answer.

    Args:
        input_ids: [B, T] (used for its shape and device only).
        attention_mask: [B, T], 1 on real tokens.
        prompt_lengths: [B] or a list, number of real prompt tokens per row (without padding).

    Returns:
        [B, T] long, 1 on response tokens.
    """
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
    real = attention_mask.bool()
    lengths = torch.as_tensor(prompt_lengths, device=attention_mask.device).view(-1, 1)
    if lengths.shape[0] != attention_mask.shape[0]:
        raise ValueError(f"prompt_lengths has {lengths.shape[0]} rows, the batch has {attention_mask.shape[0]}")
    rank = real.long().cumsum(dim=-1) - 1  # index of each real token among the real tokens of its row
    return (real & (rank >= lengths)).long()


def full_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary KL(pi || pi_ref) of the next-token distributions, shifted like ``token_logps``.

    Args:
        policy_logits, ref_logits: [B, T, V].
        mask: [B, T] response mask (same as ``loss_mask``); entry t of the result is the KL of the
            distribution that predicts token t + 1, kept where mask[:, t + 1] is 1.

    Returns:
        [B, T - 1] float32, >= 0, 0 at masked steps. Differentiable w.r.t. both inputs (detach as needed).
    """
    if policy_logits.shape != ref_logits.shape:
        raise ValueError(f"policy {tuple(policy_logits.shape)} and reference {tuple(ref_logits.shape)} logits differ")
    logp = torch.log_softmax(policy_logits[:, :-1].float(), dim=-1)
    logq = torch.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(dim=-1)
    step_mask = mask[:, 1:].bool()
    return torch.where(step_mask, kl, torch.zeros_like(kl))

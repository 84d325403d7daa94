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

- Packed batches (``core/packing.py``) score only the positions that predict a response token: ``label_logps``
  takes those rows of the logits, [N, V], and ``segment_logps`` sums them per sequence. Nothing of the size of a
  full-vocabulary log-softmax is kept: per row, the label's logit minus the row's logsumexp, in row chunks, so
  under bf16 autocast not even the float32 copy of all the logits exists at once.

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


def label_logps(logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int = 4096) -> torch.Tensor:
    """log softmax(logits[i])[targets[i]] for each row i of [N, V] logits, computed ``chunk_rows`` rows at a time.

    Returns [N] float32; equal to ``log_softmax(logits.float(), -1).gather(-1, targets[:, None])`` without that
    [N, V] tensor (the label logit minus the row's logsumexp; backward recomputes softmax per chunk).
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, V] and targets [N], got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    parts = []
    for start in range(0, logits.shape[0], chunk_rows):
        rows = logits[start:start + chunk_rows].float()
        picked = rows.gather(-1, targets[start:start + chunk_rows].unsqueeze(-1)).squeeze(-1)
        parts.append(picked - torch.logsumexp(rows, dim=-1))
    return torch.cat(parts) if parts else logits.float().sum(-1)  # no rows: [0], still in the graph


def segment_logps(token_values: torch.Tensor, segment: torch.Tensor, n_seqs: int, average: bool = False) -> torch.Tensor:
    """Per-sequence sums (or means) of per-token log-probs: ``segment[i]`` is the sequence of ``token_values[i]``.

    The packed counterpart of ``sequence_logps``: [n_seqs] float32, 0 for a sequence with no token.
    """
    if token_values.shape != segment.shape or token_values.dim() != 1:
        raise ValueError(f"token_values and segment must be equal [N] tensors, got {tuple(token_values.shape)} "
                         f"and {tuple(segment.shape)}")
    if segment.numel() and (int(segment.min()) < 0 or int(segment.max()) >= n_seqs):
        raise ValueError(f"segment ids must lie in [0, {n_seqs}), got {int(segment.min())}..{int(segment.max())}")
    values = token_values.float()
    total = values.new_zeros(n_seqs).index_add(0, segment, values)
    if not average:
        return total
    counts = torch.bincount(segment, minlength=n_seqs).clamp(min=1)
    return total / counts.to(total.dtype)


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

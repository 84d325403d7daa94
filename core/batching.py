"""Turn (prompt text, response text) pairs into padded tensors with the masks the losses need.

Works with any Hugging Face tokenizer (anything callable as ``tokenizer(texts, add_special_tokens=False)``
that returns ``{"input_ids": [[...], ...]}`` and has ``pad_token_id`` / ``eos_token_id`` / ``bos_token_id``).

Rules, chosen so that a long example keeps what matters for the loss:
- prompt and response are tokenised separately, so the prompt/response boundary is exact (no BPE merge across it)
  and ``prompt_lengths`` is known without re-tokenising;
- the prompt keeps its END (the latest turn and the assistant header sit there): left truncation;
- the response keeps its START; EOS is appended when it fits, so a response cut by truncation carries no EOS
  (the model should not learn to stop where the text was cut);
- the prompt text is expected to be already chat-templated: no special tokens are added to it, except an
  optional BOS (``add_bos``) that is put back after truncation.

``mismatched_completions`` builds KTO's mismatched pairs (TRL's convention): prompt i with completion i - 1.
"""

from __future__ import annotations

from typing import Any, Sequence, TypeVar

import torch

from prefloop.core.packing import Packed, pack_sequences

T = TypeVar("T")


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token: cannot pad")
    return int(pad)


def _side(tokenizer: Any, padding_side: str | None) -> str:
    side = padding_side or getattr(tokenizer, "padding_side", None) or "right"
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    return side


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """List of token-id lists -> (input_ids [B, T], attention_mask [B, T]) padded on ``side``."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        n = len(seq)
        if n == 0:
            continue
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, cols] = torch.tensor(list(seq), dtype=torch.long)
        attn[row, cols] = 1
    return ids, attn


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], max_prompt_len: int = 384, add_bos: bool = False
) -> list[list[int]]:
    """Token ids of each prompt, left-truncated to ``max_prompt_len`` (BOS, if asked for, counted and kept)."""
    if max_prompt_len < 1 + int(add_bos):
        raise ValueError(f"max_prompt_len={max_prompt_len} leaves no room for the prompt")
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
    if add_bos and bos is None:
        raise ValueError("add_bos=True but the tokenizer has no bos_token_id")
    out = []
    for ids in encoded:
        ids = list(ids)
        if bos is not None and ids[:1] == [bos]:
            ids = ids[1:]  # the template already wrote BOS: keep exactly one, in front
        keep = max_prompt_len - (bos is not None)
        ids = ids[-keep:] if len(ids) > keep else ids
        out.append(([bos] if bos is not None else []) + ids)
    return out


def encode_responses(
    tokenizer: Any, responses: Sequence[str], max_response_len: int = 384, add_eos: bool = True
) -> list[list[int]]:
    """Token ids of each response, right-truncated to ``max_response_len``; EOS appended only if it fits."""
    encoded = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    eos = getattr(tokenizer, "eos_token_id", None) if add_eos else None
    if add_eos and eos is None:
        raise ValueError("add_eos=True but the tokenizer has no eos_token_id")
    out = []
    for ids in encoded:
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos) and len(ids) < max_response_len:
            ids.append(eos)
        out.append(ids[:max_response_len])
    return out


def _encode_both(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_prompt_len: int,
                 max_response_len: int, add_bos: bool, add_eos: bool) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each prompt (its end kept) and each response (its start kept, EOS added)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return (encode_prompts(tokenizer, prompts, max_prompt_len, add_bos),
            encode_responses(tokenizer, responses, max_response_len, add_eos))


def encode_pairs(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_prompt_len: int = 384,
    max_response_len: int = 384,
    add_bos: bool = False,
    add_eos: bool = True,
    padding_side: str | None = None,
) -> dict[str, torch.Tensor]:
    """Encode prompt + response pairs into one padded batch.

    Returns a dict of tensors:
        input_ids [B, T], attention_mask [B, T] (1 on real tokens), loss_mask [B, T] (1 on response tokens),
        prompt_lengths [B], response_lengths [B]
    with T = the longest prompt + response of the batch, padded on ``padding_side`` (default: the tokenizer's).
    ``loss_mask`` is what ``logprobs.sequence_logps`` and the losses take.
    """
    prompt_ids, response_ids = _encode_both(tokenizer, prompts, responses, max_prompt_len, max_response_len,
                                            add_bos, add_eos)
    side = _side(tokenizer, padding_side)
    input_ids, attention_mask = pad_batch([p + r for p, r in zip(prompt_ids, response_ids)], _pad_id(tokenizer), side)
    # A response-only sequence padded the same way gives the response positions directly.
    marks = [[0] * len(p) + [1] * len(r) for p, r in zip(prompt_ids, response_ids)]
    loss_mask, _ = pad_batch(marks, 0, side)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "loss_mask": loss_mask,
        "prompt_lengths": torch.tensor([len(p) for p in prompt_ids], dtype=torch.long),
        "response_lengths": torch.tensor([len(r) for r in response_ids], dtype=torch.long),
    }


def encode_pairs_packed(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_prompt_len: int = 384,
    max_response_len: int = 384,
    add_bos: bool = False,
    add_eos: bool = True,
) -> Packed:
    """The same tokens as ``encode_pairs`` (same truncation rules), packed without padding (``core.packing``)."""
    prompt_ids, response_ids = _encode_both(tokenizer, prompts, responses, max_prompt_len, max_response_len,
                                            add_bos, add_eos)
    return pack_sequences([p + r for p, r in zip(prompt_ids, response_ids)], [len(p) for p in prompt_ids],
                          _pad_id(tokenizer))


def mismatched_completions(completions: Sequence[T]) -> list[T]:
    """KTO's mismatched pairs: the completion list rotated by one, so prompt i meets completion i - 1.

    Needs at least 2 items: with one, the "mismatched" pair would be the matched one and z would equal
    the example's own implicit reward (TRL refuses the same case).
    """
    if len(completions) < 2:
        raise ValueError("KTO's reference point needs a micro-batch of at least 2 examples")
    items = list(completions)
    return items[-1:] + items[:-1]

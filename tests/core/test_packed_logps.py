"""Packed batches through a real (tiny, random, built here) Llama: the same log-probs and gradients as padded.

Checks that transformers reads the packing from restarting position ids with sdpa and eager attention, that the
LM-head hook scores only the response positions, and that it finds the head under a PEFT LoRA wrapper too.
"""

import pytest
import torch

from prefloop.actors.train_model import packs, scored_positions_only, seq_logps
from prefloop.core.batching import pad_batch
from prefloop.core.logprobs import build_response_mask
from prefloop.core.packing import pack_sequences
from prefloop.core.train_config import TrainConfig
from tests.builders import random_llama

CPU = torch.device("cpu")
SEQS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19, 20, 21, 22, 23, 24], [25, 26, 27, 28],
        [29, 30]]
PROMPTS = [3, 1, 6, 2, 1]


def padded_batch():
    ids, attn = pad_batch(SEQS, 0, "right")
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": build_response_mask(ids, attn, PROMPTS)}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("ipo", [False, True])
def test_packed_equals_padded_logps_and_gradients(attn, ipo):
    model, cfg = random_llama(attn), TrainConfig(ipo=ipo)
    packed = pack_sequences(SEQS, PROMPTS, 0)
    assert packed.input_ids.shape[0] < len(SEQS) and packs(model, cfg)
    want = seq_logps(model, padded_batch(), cfg, CPU)
    want.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = seq_logps(model, packed, cfg, CPU)
    got.sum().backward()
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[name], atol=1e-5), name


def test_without_position_restarts_the_result_differs():
    """The check above can fail: packed rows read as one sequence each give other log-probs."""
    model, cfg = random_llama("sdpa"), TrainConfig()
    packed = pack_sequences(SEQS, PROMPTS, 0)
    want = seq_logps(model, padded_batch(), cfg, CPU)
    packed.position_ids = torch.arange(packed.input_ids.shape[1]).expand_as(packed.input_ids).clone()
    assert not torch.allclose(seq_logps(model, packed, cfg, CPU), want, atol=1e-3)


def test_head_sees_only_scored_positions_and_the_hook_is_removed():
    model = random_llama("sdpa")
    packed = pack_sequences(SEQS, PROMPTS, 0)
    with torch.no_grad(), scored_positions_only(model, packed.select):
        logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids).logits
    assert logits.shape == (int(packed.select.sum()), 64)
    with torch.no_grad():
        assert model(input_ids=packed.input_ids).logits.shape == (*packed.input_ids.shape, 64)


def test_lora_model_packs_like_padded():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(random_llama("sdpa"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                          task_type="CAUSAL_LM"))
    cfg = TrainConfig()
    assert packs(model, cfg)
    got = seq_logps(model, pack_sequences(SEQS, PROMPTS, 0), cfg, CPU)
    assert torch.allclose(got, seq_logps(model, padded_batch(), cfg, CPU), atol=1e-5)


def test_packing_only_for_attention_that_reads_position_restarts():
    model = random_llama("sdpa")
    assert not packs(model, TrainConfig(packing=False))
    model.config._attn_implementation = "flash_attention_2"  # batched packing needs varlen kernels: padded instead
    assert not packs(model, TrainConfig())

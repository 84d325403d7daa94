"""Precision on the tiny policy: bf16 frozen bases with fp32 LoRA adapters, fp32 masters computing in bf16, and a
reference frozen in the training dtype (the rules themselves are unit-tested in tests/core/test_precision.py)."""

from __future__ import annotations

import pytest
import torch

from prefloop.core.train_config import TrainConfig

pytestmark = pytest.mark.models  # loads models in-process (no Ray): deselected by `make test-fast`


def _batch(tok, cfg):
    from prefloop.actors.train_model import encode

    return encode(tok, ["Tell me about cats.", "Hi"], ["Cats purr.", "Hello there, friend."], cfg)


def test_lora_on_bf16_base_trains_fp32_adapters(tiny_assets):
    from transformers import AutoTokenizer

    from prefloop.actors.train_model import compute_dtype, load_model, seq_logps

    d = str(tiny_assets.policy)
    cfg = TrainConfig(lora={"r": 4}, max_prompt_len=16, max_response_len=8)
    model = load_model(d, torch.device("cpu"), True, cfg, "bfloat16")
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert base and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in base)
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora)
    assert compute_dtype(model) == torch.bfloat16
    before = [p.detach().clone() for p in lora]
    opt = torch.optim.AdamW(lora, lr=1e-2)
    logps = seq_logps(model, _batch(AutoTokenizer.from_pretrained(d), cfg), cfg, torch.device("cpu"))
    (-logps.mean()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lora)
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, lora))


def test_full_finetune_keeps_fp32_master_and_computes_in_bf16(tiny_assets):
    from transformers import AutoTokenizer

    from prefloop.actors.train_model import autocast, load_model

    d = str(tiny_assets.policy)
    cfg = TrainConfig(max_prompt_len=16, max_response_len=8)
    model = load_model(d, torch.device("cpu"), True, cfg, "bfloat16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    enc = _batch(AutoTokenizer.from_pretrained(d), cfg)
    with autocast(cfg, torch.device("cpu"), model):
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert logits.dtype == torch.bfloat16


def test_reference_is_frozen_in_the_training_dtype(tiny_assets):
    from prefloop.actors.train_model import load_reference

    ref = load_reference(str(tiny_assets.policy), torch.device("cpu"), TrainConfig(), "bfloat16", world=1, sharded=False)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in ref.parameters())
    assert not ref.training

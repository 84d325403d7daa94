"""policy.dtype through training: the pure rule, and the bf16 path of load_model / seq_logps on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from prefloop.core.precision import Precision, resolve_precision
from prefloop.core.train_config import TrainConfig


def test_rule_bf16_policy_on_gpu_and_cpu():
    assert resolve_precision("bfloat16", False, "cuda", True) == Precision("bfloat16", "bfloat16")
    assert resolve_precision("bfloat16", False, "cpu", False) == Precision("bfloat16", "bfloat16")


def test_rule_float32_keeps_the_bf16_switch():
    assert resolve_precision("float32", False, "cuda", True) == Precision("float32", "float32")
    assert resolve_precision("float32", True, "cuda", True) == Precision("bfloat16", "float32")
    assert resolve_precision("float32", True, "cuda", False) == Precision("float32", "float32")


def test_rule_fallbacks_say_why():
    p = resolve_precision("bfloat16", False, "cuda", False)
    assert p.compute == "float32" and "no bfloat16" in p.note
    p = resolve_precision("float16", False, "cuda", True)
    assert (p.compute, p.frozen) == ("bfloat16", "float16") and "loss scaling" in p.note
    assert resolve_precision("float16", False, "cpu", True).compute == "float32"
    assert resolve_precision("auto", False, "cuda", True, config_dtype="bfloat16").compute == "bfloat16"
    assert resolve_precision("auto", False, "cuda", True, config_dtype=None).compute == "float32"


def _policy() -> str:
    root = os.environ.get("PREFLOOP_TEST_ASSETS")
    if not root or not (Path(root) / "policy" / "config.json").is_file():
        pytest.skip("tiny assets not built (PREFLOOP_TEST_ASSETS)")
    return str(Path(root) / "policy")


def _batch(tok, cfg):
    from prefloop.actors.train_model import encode

    return encode(tok, ["Tell me about cats.", "Hi"], ["Cats purr.", "Hello there, friend."], cfg)


def test_lora_on_bf16_base_trains_fp32_adapters():
    from transformers import AutoTokenizer

    from prefloop.actors.train_model import compute_dtype, load_model, seq_logps

    d = _policy()
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


def test_full_finetune_keeps_fp32_master_and_computes_in_bf16():
    from transformers import AutoTokenizer

    from prefloop.actors.train_model import autocast, load_model

    d = _policy()
    cfg = TrainConfig(max_prompt_len=16, max_response_len=8)
    model = load_model(d, torch.device("cpu"), True, cfg, "bfloat16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    enc = _batch(AutoTokenizer.from_pretrained(d), cfg)
    with autocast(cfg, torch.device("cpu"), model):
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert logits.dtype == torch.bfloat16


def test_reference_is_frozen_in_the_training_dtype():
    from prefloop.actors.train_model import load_reference

    ref = load_reference(_policy(), torch.device("cpu"), TrainConfig(), "bfloat16", world=1, sharded=False)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in ref.parameters())
    assert not ref.training

"""policy.dtype: the pure precision rule (the bf16 path of load_model / seq_logps: tests/actors/test_precision_models.py)."""

from __future__ import annotations

from prefloop.core.precision import Precision, resolve_precision


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

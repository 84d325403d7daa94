"""bench/gpu_check.py's --cpu-smoke: the GPU script's code paths (LoRA DPO steps in bf16, the UltraRM-shaped
scorer forward, the plan's estimates) at tiny size on the CPU, so the script that goes to a GPU box has run."""

import importlib.util

from tests.paths import ROOT

BENCH = ROOT / "bench" / "gpu_check.py"


def test_cpu_smoke_runs_dpo_and_scorer(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--cpu-smoke", "--out", str(tmp_path / "r.json")])
    rows = out["train"]["rows"]
    assert [r["micro_batch_pairs"] for r in rows] == [1, 2]
    assert all(r["tokens_per_s"] > 0 and r["plan_gb"] > 0 for r in rows)
    # LoRA r=16 on all 7 linear projections of 2 tiny Mistral layers (hidden 64, q 64, kv 32, MLP 224)
    assert out["train"]["lora_params"] == 2 * 16 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 224) * 3)
    assert out["scorer"]["finite"] and (tmp_path / "r.json").is_file()


def test_peak_table():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert mod.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert mod.peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert mod.peak_flops("NVIDIA H200") == 989e12
    assert mod.peak_flops("Some GPU") is None

"""One GPU, a few minutes: does the real-size training and scoring path fit and how fast is it?

For a GPU box with torch plus carried wheels only (transformers, peft, safetensors; no Ray, no vLLM, no hub):

1. a Mistral-7B-shaped policy (the shipped config.json, random weights) in bf16 with LoRA r=16 on every linear
   layer, gradient checkpointing, sequence length 768; DPO steps (chosen + rejected in one forward, prefloop's
   ``core.logprobs`` / ``core.losses``; reference log-probs precomputed with the adapters off, as prefloop's
   default ``reference_mode: precomputed`` does) at micro-batch 1, 2, 4, ... until out of memory or the time
   budget: tokens/s, MFU against the GPU's dense bf16 peak, peak memory next to ``prefloop plan``'s estimate
   (``core/plan.py``);
2. a scorer forward pass on the GPU: the UltraRM-13b shape (LlamaModel + regression_head, bf16), reward at the
   last real token (``actors/reward_model.py``): sequences/s and peak memory next to the plan.

MFU counts model FLOPs per trained token as 4 N + 12 L h T (PaLM's 6 N + 12 L h T without the weight-gradient
2 N that a frozen LoRA base does not compute; recomputation by checkpointing is not counted).

    PYTHONPATH=. python bench/gpu_check.py [--budget-s 420] [--out results.json]
    PYTHONPATH=. python bench/gpu_check.py --cpu-smoke      # tiny shapes on the CPU: the same code, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the working tree: prefloop's pure modules, no install needed

from prefloop.core import plan as P
from prefloop.core.logprobs import sequence_logps
from prefloop.core.losses import dpo_loss
from prefloop.core.train_config import TrainConfig

CONFIGS = ROOT / "recipes" / "model_configs"
DPO = TrainConfig(method="dpo")  # the recipe defaults: beta 0.1, sigmoid DPO
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# dense bf16 peak TFLOP/s by device-name substring (first match wins; most specific first)
PEAK_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
               ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0), ("RTX 4090", 165.0), ("V100", 125.0)]


def peak_flops(name: str) -> float | None:
    return next((t * 1e12 for key, t in PEAK_TFLOPS if key in name), None)


def shrink(config: dict, smoke: bool, **tiny) -> dict:
    """The real config, or (smoke) the same architecture shrunk in width and depth only."""
    return dict(config, **tiny) if smoke else dict(config)


def policy_config(smoke: bool) -> dict:
    real = json.loads((CONFIGS / "Mistral-7B-Instruct-v0.2" / "config.json").read_text())
    return shrink(real, smoke, hidden_size=64, intermediate_size=224, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=32, vocab_size=512)


def build_policy(config: dict, device: torch.device, r: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k not in ("architectures",)})
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(ALL_LINEAR),
                                             task_type="CAUSAL_LM"))
    return model.train()


def dpo_step(model, opt, ids, mask, ref, device) -> None:
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    logps = sequence_logps(logits, ids, mask)
    n = ids.shape[0] // 2
    out = dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], DPO.beta, DPO.label_smoothing, DPO.ipo)
    out.losses.mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_check(args, device: torch.device, deadline: float) -> dict:
    config = policy_config(args.cpu_smoke)
    shape = P.model_shape(config, "Mistral-7B-shape")
    seq = args.seq_len
    model = build_policy(config, device, args.lora_r)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    flops_token = 4 * shape.params + 12 * shape.layers * shape.hidden * seq
    rows, mb = [], 1
    while mb <= args.max_micro and time.time() < deadline:
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            g = torch.Generator().manual_seed(mb)
            ids = torch.randint(3, shape.vocab, (2 * mb, seq), generator=g).to(device)
            mask = torch.zeros_like(ids)
            mask[:, seq // 2:] = 1  # half prompt, half response
            with torch.no_grad(), model.disable_adapter(), torch.autocast(device.type, dtype=torch.bfloat16):
                ref = sequence_logps(model(input_ids=ids).logits, ids, mask)
            dpo_step(model, opt, ids, mask, ref, device)  # warm-up (allocator, kernels)
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                dpo_step(model, opt, ids, mask, ref, device)
            sync(device)
            step_s = (time.perf_counter() - start) / args.steps
        except torch.cuda.OutOfMemoryError:
            print(f"  micro-batch {mb} pairs: out of memory", flush=True)
            break
        finally:
            opt.zero_grad(set_to_none=True)
        tokens_s = 2 * mb * seq / step_s
        est = P.train_need(shape, 2, P.TrainShape("ddp", 1, 2 * mb, seq, args.lora_r, ALL_LINEAR, True))
        row = {"micro_batch_pairs": mb, "step_s": round(step_s, 4), "tokens_per_s": round(tokens_s, 1),
               "plan_gb": round(est.total / P.GB, 2),
               "plan_gb_without_runtime": round((est.total - est.parts["runtime"]) / P.GB, 2)}
        if device.type == "cuda":
            row["peak_gb"] = round(torch.cuda.max_memory_allocated() / P.GB, 2)
            peak = peak_flops(torch.cuda.get_device_name())
            row["mfu"] = round(tokens_s * flops_token / peak, 4) if peak else None
        print("  " + json.dumps(row), flush=True)
        rows.append(row)
        mb *= 2
    del model, opt, params
    gc.collect()
    best = max(rows, key=lambda r: r["tokens_per_s"]) if rows else None
    return {"params": shape.params, "lora_params": shape.lora_params(args.lora_r, ALL_LINEAR), "seq_len": seq,
            "flops_per_token": flops_token, "rows": rows, "best": best}


def scorer_check(args, device: torch.device) -> dict:
    """UltraRM-13b shape (LlamaModel + Linear(hidden, 1, bias=False)) in bf16: one batch, reward at the last
    real token (right padding), as ``actors/reward_model.HeadRewardModel`` computes it."""
    from transformers import LlamaConfig, LlamaModel

    from prefloop.actors.reward_model import last_token_index

    real = json.loads((CONFIGS / "UltraRM-13b" / "config.json").read_text())
    config = shrink(real, args.cpu_smoke, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=2, vocab_size=512)
    shape = P.model_shape(config, "UltraRM-13b-shape")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with device:
        base = LlamaModel(LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"})).to(torch.bfloat16)
        head = torch.nn.Linear(shape.hidden, 1, bias=False, dtype=torch.bfloat16)
    base.eval()
    batch, seq = args.scorer_batch, args.seq_len
    ids = torch.randint(3, shape.vocab, (batch, seq)).to(device)
    attn = torch.ones_like(ids)
    attn[batch // 2:, seq * 3 // 4:] = 0  # half the rows padded
    with torch.no_grad():
        rewards = head(base(input_ids=ids, attention_mask=attn).last_hidden_state).squeeze(-1)
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            hidden = base(input_ids=ids, attention_mask=attn).last_hidden_state
            rewards = head(hidden).squeeze(-1).gather(1, last_token_index(attn)[:, None])[:, 0]
        sync(device)
    per_batch = (time.perf_counter() - start) / args.steps
    est = P.scorer_need(shape, 2, batch, seq)
    out = {"params": shape.params, "batch": batch, "seq_len": seq, "batch_s": round(per_batch, 4),
           "sequences_per_s": round(batch / per_batch, 1), "finite": bool(torch.isfinite(rewards.float()).all()),
           "plan_gb": round(est.total / P.GB, 2)}
    if device.type == "cuda":
        out["peak_gb"] = round(torch.cuda.max_memory_allocated() / P.GB, 2)
    print("  " + json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (the same code paths)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 768; smoke 64)")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per micro-batch (default 3; smoke 1)")
    ap.add_argument("--max-micro", type=int, default=None, help="largest micro-batch tried, in pairs (default 64)")
    ap.add_argument("--scorer-batch", type=int, default=16)
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop growing the micro-batch after this")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    args.seq_len = args.seq_len or (64 if smoke else 768)
    args.steps = args.steps or (1 if smoke else 3)
    args.max_micro = args.max_micro or (2 if smoke else 64)
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu-smoke for the CPU smoke test")
    device = torch.device("cpu" if smoke else "cuda")
    started = time.time()
    name = "cpu" if smoke else torch.cuda.get_device_name()
    print(f"device {name}; peak bf16 {peak_flops(name)} FLOP/s; torch {torch.__version__}", flush=True)
    print(f"DPO, Mistral-7B shape, LoRA r={args.lora_r} all linear, bf16, seq {args.seq_len}:", flush=True)
    result = {"device": name, "train": train_check(args, device, started + args.budget_s)}
    print("scorer, UltraRM-13b shape, bf16:", flush=True)
    result["scorer"] = scorer_check(args, device)
    result["wall_s"] = round(time.time() - started, 1)
    print(f"done in {result['wall_s']} s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

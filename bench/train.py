"""DPO training throughput: prefloop's Ray Train stage against TRL's DPOTrainer, measured in one run.

Same model (a random-weight Llama built here), same data, same global batch (pairs per optimizer step), same
sequence lengths (nothing is truncated on either side), full fine-tuning, precomputed reference log-probs on
both sides (TRL: ``precompute_ref_log_probs=True``), float32 on CPU.

tokens/s = real (non-pad) tokens of prompt+chosen and prompt+rejected trained per second of optimizer steps,
start-up excluded on both sides (Ray Train's worker start, TRL's tokenisation and reference pass), the first
step of each dropped as warm-up. prefloop: ``num_workers`` DDP workers (gloo), one thread each; TRL: one
process with the machine's threads. TRL is a bench-only dependency (``pip install trl``).

    python bench/train.py [--pairs 128] [--epochs 2] [--hidden 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

WORDS = ("the a river cat bread train music garden star boat tea map bird snow clock shoe lamp book is good kind "
         "bad no very quite often never always small large warm cold bright dark").split()


def build_model(out: Path, hidden: int, layers: int, seed: int = 0) -> Path:
    """A random-weight Llama of the given width/depth and a byte-level BPE tokenizer with a Tulu template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([" ".join(rng.choices(WORDS, k=12)) for _ in range(2000)], trainer)
    template = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  padding_side="right", chat_template=template)
    torch.manual_seed(seed)
    heads = max(2, hidden // 64)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=hidden // heads,
                      max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt_id": f"p{i}", "prompt": "Tell me about " + " ".join(rng.choices(WORDS, k=10)),
             "chosen": " ".join(rng.choices(WORDS, k=rng.randint(20, 40))),
             "rejected": " ".join(rng.choices(WORDS, k=rng.randint(20, 40)))} for i in range(n)]


def token_count(model_dir: Path, pairs: list[dict], max_len: int) -> int:
    """Real tokens of one epoch (prompt+chosen and prompt+rejected), as prefloop encodes them."""
    from transformers import AutoTokenizer

    from prefloop.core.batching import encode_pairs

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False,
                                       add_generation_prompt=True) for p in pairs]
    enc = encode_pairs(tok, prompts * 2, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
                       max_len, max_len)
    assert int(enc["prompt_lengths"].max()) < max_len and int(enc["response_lengths"].max()) < max_len, "truncated"
    return int(enc["attention_mask"].sum())


def bench_trl(model_dir: Path, pairs: list[dict], args: argparse.Namespace, work: Path) -> float:
    """Seconds per optimizer step (median, first step dropped) of TRL's DPOTrainer."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], 0.0

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t0)

    timer = StepTimer()
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}],
                               "chosen": [{"role": "assistant", "content": p["chosen"]}],
                               "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])
    config = DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.batch, learning_rate=1e-4,
                       num_train_epochs=args.epochs, beta=0.1, max_length=2 * args.max_len, use_cpu=True,
                       precompute_ref_log_probs=True, report_to="none", save_strategy="no", logging_steps=10_000,
                       lr_scheduler_type="linear", warmup_steps=0.1, dataloader_num_workers=0)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=config, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[timer])
    trainer.train()
    return statistics.median(timer.times[1:]), len(timer.times)


def bench_prefloop(model_dir: Path, pairs: list[dict], args: argparse.Namespace, work: Path) -> float:
    """Seconds per optimizer step (median, first step dropped) of prefloop's train stage."""
    from prefloop.app.rundir import RunDir, write_manifest
    from prefloop.app.tables import write_parquet
    from prefloop.app.train import run_train
    from prefloop.core.config import parse_recipe

    run = RunDir(work / "run")
    rows = [{**p, "messages": [{"role": "user", "content": p["prompt"]}]} for p in pairs]
    with run.commit(0, "rollout") as out:
        write_parquet(out / "pairs.parquet", rows)
        write_manifest(out, {"stage": "rollout"})
    recipe = parse_recipe({
        "name": "bench", "run_dir": str(run.root), "policy": {"model": str(model_dir), "chat_template": "tokenizer"},
        "data": {"train": "unused"}, "scorer": {"kind": "function", "function": "m:f"},
        "train": {"method": "dpo", "lr": 1e-4, "epochs": args.epochs, "num_workers": args.workers,
                  "cpus_per_worker": max(1, (os.cpu_count() or 1) // args.workers),
                  "micro_batch_size": args.batch // args.workers, "max_prompt_len": args.max_len,
                  "max_response_len": args.max_len, "checkpoint_every_steps": 10_000, "log_every_steps": 10_000}},
        "bench")
    folder = run_train(recipe, 0)
    history = [json.loads(line) for line in (folder / "train_metrics.jsonl").read_text().splitlines()]
    return statistics.median(m["step_time_s"] for m in history[1:]), len(history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="pairs per optimizer step (global)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=64, help="prompt and response token limit (each)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="prefloop-bench-train-"))
    model_dir = build_model(work / "model", args.hidden, args.layers)
    pairs = make_pairs(args.pairs)
    tokens_per_step = token_count(model_dir, pairs, args.max_len) / (args.pairs / args.batch)
    trl_step, trl_steps = bench_trl(model_dir, pairs, args, work)  # before Ray: it owns the process's threads
    ours_step, our_steps = bench_prefloop(model_dir, pairs, args, work)
    ours, trl = tokens_per_step / ours_step, tokens_per_step / trl_step
    print(f"model: hidden {args.hidden}, {args.layers} layers; {args.pairs} pairs x {args.epochs} epochs, "
          f"{args.batch} pairs/step, {tokens_per_step:.0f} tokens/step")
    print(f"prefloop ({args.workers} Ray Train workers): {ours_step * 1000:.1f} ms/step, {ours:.0f} tokens/s "
          f"({our_steps} steps)")
    print(f"TRL DPOTrainer (1 process):     {trl_step * 1000:.1f} ms/step, {trl:.0f} tokens/s ({trl_steps} steps)")
    print(f"ratio prefloop / TRL: {ours / trl:.2f} (target >= 1.0)")


if __name__ == "__main__":
    main()

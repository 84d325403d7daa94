"""DPO training throughput: prefloop's Ray Train stage (1 and 2 workers) against TRL's DPOTrainer, reference
pass included on both sides.

Same model (a random-weight Llama built here, never downloaded), same pairs of varied lengths (prompts of about
16-256 tokens, answers 16-256), same global batch (pairs per optimizer step), same steps, nothing truncated,
full fine-tuning, float32 on CPU (TRL's default bf16 autocast turned off). Both sides precompute the reference log-probs before training, with the same
batch (4 micro-batches of pairs). TRL is set up at its best for this work: ``precompute_ref_log_probs=True`` (and
its fused LM head, always on); its ``padding_free`` mode falls back to padding in TRL 1.16 (it needs FlashAttention
and is disabled since its DPO refactor), so it is not used. prefloop runs as configured by default
(``train.packing: true``: padding-free packed rows, LM head on response positions only).

tokens/s = real tokens trained (prompt+chosen and prompt+rejected, every epoch) / (reference pass + the
optimizer steps: the median step time times the steps, as each side's first step carries lazy set-up).
prefloop's reference pass is the whole Ray Data stage's wall time (actor start and model load
included, which TRL's figure does not pay); start-up (Ray, worker groups, TRL's tokenisation) and the final save
are outside on both sides. Each run is a separate process; the repeats interleave the three set-ups (rotating
their order) and the medians are compared. TRL is a bench-only dependency: ``pip install -e .[bench]``.

    python bench/train.py [--pairs 128] [--epochs 1] [--batch 8] [--repeats 3] [--hidden 256] [--layers 4]
    python bench/train.py --shape smollm2    # SmolLM2-135M's architecture: 30 layers, GQA, tied embeddings
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# `python bench/train.py` puts bench/ first on the path, where bench/select.py would shadow the standard library's
# `select` (subprocess and Ray import it): take bench/ off; `results` is imported by its path below.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

WORDS = ("the a river cat bread train music garden star boat tea map bird snow clock shoe lamp book is good kind "
         "bad no very quite often never always small large warm cold bright dark").split()
MAX_LEN = 320  # prompt and response token limit (each): above every generated length, so nothing is cut


# SmolLM2-135M-Instruct's architecture (its config.json): 30 layers, GQA 9/3 heads, tied embeddings, 49k vocabulary
SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True}


def build_model(out: Path, hidden: int, layers: int, seed: int = 0, shape: str = "bench") -> Path:
    """A random-weight Llama of the given width/depth (or SmolLM2's whole shape) and a byte-level BPE tokenizer
    with a Tulu-like template (its 1000 tokens index the first rows of a larger embedding)."""
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
    dims = SMOLLM2 if shape == "smollm2" else dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=hidden // heads,
        tie_word_embeddings=False)
    cfg = LlamaConfig(**dims, max_position_embeddings=2 * MAX_LEN, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """Prompts of 12-250 words (16-256 tokens once templated), answers of 15-255 words (+ EOS: 16-256 tokens)."""
    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))

    return [{"prompt_id": f"p{i}", "prompt": words(12, 250), "chosen": words(15, 255), "rejected": words(15, 255)}
            for i in range(n)]


def token_stats(model_dir: Path, pairs: list[dict]) -> dict:
    """Real tokens of one epoch (prompt+chosen and prompt+rejected) as prefloop encodes them, and the ranges."""
    from transformers import AutoTokenizer

    from prefloop.core.batching import encode_pairs

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False,
                                       add_generation_prompt=True) for p in pairs]
    enc = encode_pairs(tok, prompts * 2, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
                       MAX_LEN, MAX_LEN)
    p_len, r_len = enc["prompt_lengths"], enc["response_lengths"]
    assert int(p_len.max()) < MAX_LEN and int(r_len.max()) < MAX_LEN, "a sequence would be truncated"
    return {"epoch_tokens": int(enc["attention_mask"].sum()), "prompt_tokens": [int(p_len.min()), int(p_len.max())],
            "answer_tokens": [int(r_len.min()), int(r_len.max())]}


# ---------------------------------------------------------------- one measured run (a child process each)

def run_trl(model_dir: Path, pairs: list[dict], args: argparse.Namespace, work: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Timed(DPOTrainer):
        ref_s = 0.0

        def _precompute_ref_logps(self, *a, **k):
            t0 = time.perf_counter()
            out = super()._precompute_ref_logps(*a, **k)
            Timed.ref_s += time.perf_counter() - t0
            return out

    class StepTimer(TrainerCallback):
        times: list[float] = []

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t0)

    timer = StepTimer()
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}],
                               "chosen": [{"role": "assistant", "content": p["chosen"]}],
                               "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])
    config = DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.batch, learning_rate=1e-4,
                       num_train_epochs=args.epochs, beta=0.1, max_length=None, use_cpu=True,
                       precompute_ref_log_probs=True, precompute_ref_batch_size=4 * args.batch, report_to="none",
                       bf16=False,  # TRL defaults to bf16 autocast; both sides compute in float32 here
                       save_strategy="no", logging_steps=10_000, lr_scheduler_type="linear", warmup_steps=0.1,
                       dataloader_num_workers=0, disable_tqdm=True)
    trainer = Timed(model=AutoModelForCausalLM.from_pretrained(model_dir), args=config, train_dataset=data,
                    processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[timer])
    trainer.train()
    return {"ref_s": Timed.ref_s, "step_times": timer.times}


def run_prefloop(model_dir: Path, pairs: list[dict], args: argparse.Namespace, work: Path) -> dict:
    from prefloop.app.rounds.round import Round
    from prefloop.app.rounds.train import run_train
    from prefloop.app.storage.rundir import MANIFEST, RunDir, write_manifest
    from prefloop.app.storage.tables import write_parquet
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
                  "cpus_per_worker": max(1, (os.cpu_count() or 1) // args.workers), "packing": not args.padded,
                  "micro_batch_size": args.batch // args.workers, "max_prompt_len": MAX_LEN,
                  "max_response_len": MAX_LEN, "checkpoint_every_steps": 10_000, "log_every_steps": 10_000}},
        "bench")
    folder = run_train(Round.of(recipe))
    history = [json.loads(line) for line in (folder / "train_metrics.jsonl").read_text().splitlines()]
    manifest = json.loads((folder / MANIFEST).read_text())
    return {"ref_s": manifest["timings_s"]["reference_pass"], "step_times": [m["step_time_s"] for m in history]}


# ---------------------------------------------------------------- the parent: repeats, medians, ratios

SETUPS = {"trl": ["--run", "trl"], "prefloop_1w": ["--run", "prefloop", "--workers", "1"],
          "prefloop_2w": ["--run", "prefloop", "--workers", "2"]}


def child(setup: str, args: argparse.Namespace, work: Path, timeout_s: float) -> dict:
    out = work / f"{setup}-{time.time_ns()}"
    cmd = [sys.executable, __file__, *SETUPS[setup], "--pairs", str(args.pairs),
           "--epochs", str(args.epochs), "--batch", str(args.batch), "--hidden", str(args.hidden),
           "--layers", str(args.layers), "--shape", args.shape] + (["--padded"] if args.padded else [])
    for attempt in (1, 2):  # a loaded machine can time out Ray's start-up: one more try, said aloud
        done = subprocess.run(cmd + ["--work", f"{out}-{attempt}"], capture_output=True, text=True, timeout=timeout_s)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if not done.returncode and lines:
            return json.loads(lines[-1][len("RESULT "):])
        print(f"  {setup} run failed (rc {done.returncode}, attempt {attempt}):\n{done.stderr[-2000:]}", flush=True)
    raise RuntimeError(f"{setup} failed twice")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="pairs per optimizer step (global)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--shape", choices=["bench", "smollm2"], default="bench",
                        help="smollm2: SmolLM2-135M's architecture (random weights); --hidden/--layers are ignored")
    parser.add_argument("--padded", action="store_true", help="prefloop with train.packing: false (for comparison)")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="limit of each run")
    parser.add_argument("--run", choices=["trl", "prefloop"], help=argparse.SUPPRESS)  # a child's one run
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.run:
        work = Path(args.work)
        work.mkdir(parents=True)
        base = work.parent
        pairs = json.loads((base / "pairs.json").read_text())
        runner = run_trl if args.run == "trl" else run_prefloop
        print("RESULT " + json.dumps(runner(base / "model", pairs, args, work)), flush=True)
        return

    work = Path(tempfile.mkdtemp(prefix="prefloop-bench-train-"))
    model_dir = build_model(work / "model", args.hidden, args.layers, shape=args.shape)
    pairs = make_pairs(args.pairs)
    (work / "pairs.json").write_text(json.dumps(pairs))
    stats = token_stats(model_dir, pairs)
    tokens = stats["epoch_tokens"] * args.epochs
    print(f"model: {model_name(args)}; {args.pairs} pairs x {args.epochs} epochs, "
          f"{args.batch} pairs/step; prompts {stats['prompt_tokens']} tokens, answers {stats['answer_tokens']}; "
          f"{tokens} tokens trained", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in SETUPS}
    names = list(SETUPS)
    for rep in range(args.repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:  # rotate the order each repeat
            r = child(name, args, work, args.timeout_s)
            # the median step (each side's first one carries its lazy set-up) times the steps of the run
            r["steps"] = len(r["step_times"])
            r["steps_s"] = statistics.median(r["step_times"]) * r["steps"]
            r["tokens_per_s"] = tokens / (r["ref_s"] + r["steps_s"])
            r["train_tokens_per_s"] = tokens / r["steps_s"]
            runs[name].append(r)
            print(f"  repeat {rep + 1} {name}: reference {r['ref_s']:.1f} s + {r['steps']} steps {r['steps_s']:.1f} s "
                  f"-> {r['tokens_per_s']:.0f} tokens/s", flush=True)
    report(runs, stats, tokens, args)


def model_name(args: argparse.Namespace) -> str:
    if args.shape == "smollm2":
        return "SmolLM2-135M shape (Llama h576 L30, GQA 9/3, tied embeddings, vocab 49152; random weights)"
    return f"Llama h{args.hidden} L{args.layers}"


def report(runs: dict[str, list[dict]], stats: dict, tokens: int, args: argparse.Namespace) -> None:
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("tokens_per_s", "train_tokens_per_s", "ref_s",
                                                                   "steps_s")} for name, rs in runs.items()}
    ratio = {n: med[n]["tokens_per_s"] / med["trl"]["tokens_per_s"] for n in ("prefloop_1w", "prefloop_2w")}
    for name, m in med.items():
        print(f"{name:12s} median {m['tokens_per_s']:7.0f} tokens/s (reference {m['ref_s']:.1f} s + steps "
              f"{m['steps_s']:.1f} s; steps alone {m['train_tokens_per_s']:.0f} tokens/s)")
    print(f"ratio prefloop / TRL DPOTrainer: 1 worker {ratio['prefloop_1w']:.2f} (goal >= 1.3), "
          f"2 workers {ratio['prefloop_2w']:.2f}")
    sys.path.append(str(HERE))  # last, after the standard library
    from results import record

    met = ratio["prefloop_1w"] >= 1.3
    figures = {"tokens_trained": tokens, **stats, "repeats": args.repeats, "model": model_name(args), "pairs": args.pairs, "epochs": args.epochs, "batch": args.batch,
               "packing": not args.padded, "median": med, "ratio_vs_trl": ratio, "runs": runs}
    name = "train_dpo" + ("_padded" if args.padded else "") + ("_smollm2_shape" if args.shape == "smollm2" else "")
    record(name, figures,
           headline=f"prefloop DPO incl. reference pass: {ratio['prefloop_1w']:.2f}x TRL DPOTrainer tokens/s with "
                    f"1 worker, {ratio['prefloop_2w']:.2f}x with 2 (medians of {args.repeats})",
           goal="1 worker >= 1.3x TRL DPOTrainer tokens/s", met=met)


if __name__ == "__main__":
    main()

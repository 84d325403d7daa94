"""The driver's memory against the prompt set's size: ``python bench/rollout.py --scale``.

For each size (5k and 50k prompts by default) a synthetic prompt file is written to a temporary folder and a
whole rollout stage (``run_rollout``: read, generate with the tiny vLLM policy, score with a function, select,
write) runs in a fresh Python process, the driver. That process reports its own peak resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss``: the driver only, not Ray's workers or raylet) and its memory after Ray and
the libraries were loaded, before the first prompt was read (the floor every run pays). Goal: peak at 50k at most
1.3x peak at 5k.

``--before ROOT`` runs the same sizes with another checkout's code instead (e.g. ``git archive`` of the commit
before the streaming rollout) and only prints, for a before/after on the same machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_RATIO = 1.3
TOPICS = ["cats", "rivers", "bread", "trains", "music", "gardens", "stars", "boats", "tea", "maps", "birds", "snow"]
MARK = "SCALE_RESULT "


def write_prompts(path: Path, n: int) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"Tell me about {TOPICS[i % len(TOPICS)]} number {i}."}) + "\n")
    return path


def scale_recipe(tmp: Path, policy: str, prompts: Path, samples: int, max_tokens: int, batch: int) -> dict:
    return {
        "name": "scale", "run_dir": str(tmp / "run"),
        "policy": {"model": policy, "chat_template": "tokenizer"},
        "data": {"train": str(prompts), "max_prompt_tokens": 64},
        "rollout": {"num_samples": samples, "max_tokens": max_tokens, "max_model_len": 128, "batch_size": batch},
        "scorer": {"kind": "function", "function": "prefloop.tinyworld.gold:gold_score", "batch_size": batch},
        "resources": {"wait_timeout_s": 1800},
        "train": {"method": "dpo"},
    }


def rss_mib() -> float:
    """This process's resident memory now (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(recipe_file: str) -> None:
    """One driver: load everything, note the floor, run the rollout stage, report the peak."""
    import resource

    from transformers import AutoTokenizer  # noqa: F401  (what the stage loads anyway: part of the floor)

    import prefloop.actors.generator  # noqa: F401  (vLLM: the driver imports it to build the generator stage)
    import prefloop.actors.scorers  # noqa: F401
    from prefloop.app.dataflow.runtime import init_ray
    from prefloop.app.rounds.rollout import run_rollout
    from prefloop.app.rounds.round import Round
    from prefloop.core.config import parse_recipe

    recipe = parse_recipe(json.loads(Path(recipe_file).read_text()), "scale")
    init_ray(recipe.resources)
    floor = rss_mib()
    started = time.perf_counter()
    folder = run_rollout(Round.of(recipe))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    counts = json.loads((folder / "manifest.json").read_text())["counts"]
    print(MARK + json.dumps({"peak_mib": peak, "floor_mib": floor, "seconds": seconds,
                             "prompts": counts["prompts_generated"], "candidates": counts["candidates"]}), flush=True)


def run_size(code: Path, n: int, args, policy: str, tmp: Path) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"scale-{n}-", dir=tmp))
    recipe = scale_recipe(folder, policy, write_prompts(folder / "prompts.jsonl", n), args.samples,
                          args.max_tokens, args.batch)
    recipe_file = folder / "recipe.json"
    recipe_file.write_text(json.dumps(recipe))
    env = dict(os.environ, PYTHONPATH=str(code), HF_HUB_OFFLINE="1")
    # -P: the child's sys.path does not start with bench/ (whose select.py would shadow the standard library's)
    proc = subprocess.run([sys.executable, "-P", str(Path(__file__).resolve()), recipe_file], env=env, cwd=str(code),
                          capture_output=True, text=True, timeout=args.timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"scale bench: the {n}-prompt driver failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len(MARK):])
    print(f"  {code.name or code}: {n:>6} prompts  peak {result['peak_mib']:7.1f} MiB  floor "
          f"{result['floor_mib']:7.1f} MiB  {result['seconds']:6.0f} s", flush=True)
    return result


def scale(args, policy: str, label: str) -> dict:
    """Every size with this checkout's code (``--before``'s for label ``before``); print and return the figures."""
    code = Path(args.before).resolve() if args.before else Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="prefloop-scale-") as tmp:
        results = {n: run_size(code, n, args, policy, Path(tmp)) for n in args.sizes}
    small, large = min(args.sizes), max(args.sizes)
    ratio = results[large]["peak_mib"] / results[small]["peak_mib"]
    mine = {str(n): {k: round(v, 1) for k, v in r.items()} for n, r in results.items()}
    print(f"\nrollout scale bench ({label}: {code}): driver peak RSS, {args.samples} samples, {args.max_tokens} new "
          "tokens, function scorer")
    print("  " + "   ".join(f"{n}: {r['peak_mib']:.0f} MiB (+{r['peak_mib'] - r['floor_mib']:.0f} over the floor)"
                            for n, r in results.items()) + f"   ratio {large}/{small}: {ratio:.2f}")
    return {"sizes": args.sizes, "samples": args.samples, "max_tokens": args.max_tokens,
            label: {**mine, "ratio": round(ratio, 3)}}


if __name__ == "__main__":  # one driver of the scale bench: python bench/rollout_scale.py RECIPE.json
    child(sys.argv[1])

"""Rollout throughput: the Ray Data stages against bare loops, measured in one run on the same inputs.

    python bench/rollout.py [--prompts 256] [--samples 4] [--max-tokens 48] [--repeats 3]
    python bench/rollout.py --scale [--sizes 5000 50000] [--before ROOT]     (the driver's memory: rollout_scale.py)

Generation: tokens/s of the Ray Data generator stage (``VLLMGenerator`` in an actor pool) against a bare
``vllm.LLM.generate`` loop over the same batches with the same sampling settings. Scoring: PairRM pairs/s
(each prompt's N x (N-1) comparisons) of the Ray Data scorer stage against a bare ``Blender.rank`` loop.

"After start-up": the bare loops are timed after their engine / ranker is built (their first repeat is the
cold one); a Ray stage is timed from the start of its second batch call (recorded by the actor) to the
arrival of its last row at the driver, so engine start-up and first-call warm-up are excluded but Ray's
scheduling, serialisation and transfer costs are included. Both sides get the same CPU budget: one intra-op
thread for the PairRM loop, as Ray gives a ``num_cpus=1`` actor.
Each measurement is repeated; medians and the ratio Ray / bare are printed (the machine is noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# bench/select.py, beside this file, shadows the standard library's `select` (which subprocess, asyncio and Ray
# import): a script's folder comes first on sys.path. Load the real module before anything needs it.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    _bench = sys.path.pop(0)
    import select  # noqa: E402,F401
    sys.path.insert(0, _bench)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_rows(policy: str, n_prompts: int, source: str | None) -> list[dict]:
    from transformers import AutoTokenizer

    from prefloop.core.prompts import read_prompts
    from prefloop.core.templates import render_prompt
    from prefloop.tinyworld.topics import DATA_DIR

    tok = AutoTokenizer.from_pretrained(policy)
    records = read_prompts(source or DATA_DIR / "prompts.jsonl").accepted
    records = (records * (n_prompts // len(records) + 1))[:n_prompts]
    return [{"prompt_id": f"{r.prompt_id}-{i}", "prompt": r.prompt, "messages": json.dumps(r.messages),
             "prompt_token_ids": tok(render_prompt(r.messages, "tokenizer", tok))["input_ids"]}
            for i, r in enumerate(records)]


def bare_generation(gen, rows: list[dict], batch: int) -> tuple[float, list[list]]:
    started, tokens, samples = time.perf_counter(), 0, []
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        out = gen.generate([r["prompt_id"] for r in chunk], [r["prompt_token_ids"] for r in chunk])
        tokens += sum(len(s.token_ids) for per in out for s in per)
        samples.extend([s.text for s in per] for per in out)
    return tokens / (time.perf_counter() - started), samples


def bare_scoring(scorer, rows: list[dict], candidates: list[list[str]], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        scorer.score([r["prompt"] for r in rows[i:i + batch]], candidates[i:i + batch])
    n = len(candidates[0])
    return len(rows) * n * (n - 1) / (time.perf_counter() - started)


def bare_generation_runs(gen, rows: list[dict], batch: int, repeats: int) -> tuple[list, list]:
    runs = [bare_generation(gen, rows, batch) for _ in range(repeats)]
    return [tps for tps, _ in runs], runs[-1][1]


def ray_stage(cls, kwargs: dict, rows: list[dict], batch: int, column: str, cpus: float) -> tuple[float, list]:
    """Run one actor-pool stage over ``rows``; return (seconds, rows) measured from the second batch call on.

    The first call of a fresh actor pays one-off warm-up (as the bare loops' first repeat does), so it is
    left out: the window runs from the start of the second batch call to the arrival of the last row."""
    import ray

    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // batch))
    ds = ds.map_batches(cls, fn_constructor_kwargs=kwargs, batch_size=batch,
                        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=cpus)
    out = list(ds.iter_rows())
    end = time.time()
    starts = sorted({r[f"{column}_t0"] for r in out})
    if len(starts) < 2:
        raise SystemExit("bench: need at least two batches (raise --prompts or lower --batch)")
    measured = [r for r in out if r[f"{column}_t0"] >= starts[1]]
    window = end - starts[1]
    # the share of the window the actor spent inside its batch calls: the rest is Ray Data's scheduling and transfer
    busy = sum(r[column] for r in measured) / window
    print(f"  {cls.__name__} stage: {window:.2f} s window, actor busy {busy:.0%} of it", flush=True)
    return window, measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--samples", type=int, help="default 4 (--scale: 2)")
    parser.add_argument("--max-tokens", type=int, help="default 48 (--scale: 4)")
    parser.add_argument("--batch", type=int, help="default 32 (--scale: 128)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", help="prompt file (default: the shipped prompts)")
    parser.add_argument("--scale", action="store_true", help="the driver's peak memory at two prompt-set sizes")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000], help="--scale: prompt counts")
    parser.add_argument("--before", help="--scale: run another checkout's code instead, print only (a before/after)")
    parser.add_argument("--timeout", type=float, default=3600, help="--scale: seconds per driver")
    args = parser.parse_args()
    for name, (plain, scale) in {"samples": (4, 2), "max_tokens": (48, 4), "batch": (32, 128)}.items():
        if getattr(args, name) is None:
            setattr(args, name, scale if args.scale else plain)
    if args.scale:
        return main_scale(args)

    import ray
    import torch

    from prefloop.actors.generator import VLLMGenerator
    from prefloop.actors.scorers import PairRMScorer
    from prefloop.app.dataflow.runtime import init_ray
    from prefloop.core.config import ResourcesConfig
    from prefloop.core.round_settings import EngineSettings
    from prefloop.core.sampling import SampleSpec
    from prefloop.tinyworld.assets import build_assets, default_assets_dir

    assets = build_assets(default_assets_dir())
    rows = load_rows(str(assets.policy), args.prompts, args.data)
    spec = SampleSpec(args.samples, 1.0, 1.0, args.max_tokens, 0)
    gen_kwargs = dict(model=str(assets.policy), spec=spec, engine=EngineSettings(max_model_len=256).as_dict())
    n, b = args.samples, args.batch

    # Ray gives an actor with num_cpus=1 one OpenMP thread (OMP_NUM_THREADS=1), and vLLM's CPU engine process
    # takes its thread count from it; the bare loop's engine gets the same, or it would compute on both cores
    os.environ["OMP_NUM_THREADS"] = "1"
    gen = VLLMGenerator(**gen_kwargs)
    bare_gen, candidates = bare_generation_runs(gen, rows, b, args.repeats)
    gen.shutdown()  # its engine process would otherwise keep one of the cores busy during the PairRM loop
    torch.set_num_threads(1)  # the PairRM loop runs in this process: one intra-op thread, as in the actor
    scorer = PairRMScorer(str(assets.pairrm), batch_size=b)
    bare_score = [bare_scoring(scorer, rows, candidates, b) for _ in range(args.repeats)]
    del scorer

    init_ray(ResourcesConfig())
    ray_gen, ray_score = [], []
    scored_rows = [dict(r, candidates=c) for r, c in zip(rows, candidates)]
    # all generation repeats first, as the bare loops ran: a vLLM engine process that is still shutting down
    # after its stage would otherwise share the cores with the PairRM stage that follows it
    for _ in range(args.repeats):
        window, out = ray_stage(VLLMGenerator, gen_kwargs, rows, b, "generate_s", 1.0)
        ray_gen.append(sum(sum(r["num_tokens"]) for r in out) / window)
    for _ in range(args.repeats):
        window, out = ray_stage(PairRMScorer, {"ranker_dir": str(assets.pairrm), "batch_size": b},
                                scored_rows, b, "score_s", 1.0)
        ray_score.append(len(out) * n * (n - 1) / window)
    ray.shutdown()

    med = statistics.median
    print(f"\nrollout bench: {args.prompts} prompts x {n} samples, max_tokens {args.max_tokens}, batch {b}, "
          f"{args.repeats} repeats (medians)")
    print(f"  generation tokens/s   bare vLLM {med(bare_gen):9.1f}   Ray Data stage {med(ray_gen):9.1f}   "
          f"ratio {med(ray_gen) / med(bare_gen):.2f}   runs bare={[round(x) for x in bare_gen]} "
          f"ray={[round(x) for x in ray_gen]}")
    print(f"  PairRM pairs/s        bare rank {med(bare_score):9.1f}   Ray Data stage {med(ray_score):9.1f}   "
          f"ratio {med(ray_score) / med(bare_score):.2f}   runs bare={[round(x) for x in bare_score]} "
          f"ray={[round(x) for x in ray_score]}")
    from results import record  # bench/results.py, beside this file

    figures = {"prompts": args.prompts, "samples": n, "max_tokens": args.max_tokens, "batch": b,
               "repeats": args.repeats, "bare_gen_tokens_per_s": bare_gen, "stage_gen_tokens_per_s": ray_gen,
               "bare_rank_pairs_per_s": bare_score, "stage_rank_pairs_per_s": ray_score,
               "ratio_gen": med(ray_gen) / med(bare_gen), "ratio_rank": med(ray_score) / med(bare_score)}
    record("rollout_stages", figures, headline=f"Ray Data stage / bare loop: generation {figures['ratio_gen']:.2f}x "
           f"({med(ray_gen):.0f} vs {med(bare_gen):.0f} tokens/s), PairRM full ranking {figures['ratio_rank']:.2f}x "
           f"({med(ray_score):.0f} vs {med(bare_score):.0f} pairs/s), medians of {args.repeats}")


def main_scale(args: argparse.Namespace) -> None:
    from results import record  # bench/results.py, beside this file
    from rollout_scale import GOAL_RATIO, scale

    from prefloop.tinyworld.assets import build_assets, default_assets_dir

    label = "before" if args.before else "after"
    figures = scale(args, str(build_assets(default_assets_dir()).policy), label)
    if args.before:
        return  # another checkout's figures: for comparison, not this code's record
    small, large = str(min(args.sizes)), str(max(args.sizes))
    got = figures[label]
    headline = (f"driver peak RSS {got[small]['peak_mib']:.0f} MiB at {small} prompts, "
                f"{got[large]['peak_mib']:.0f} MiB at {large}: {got['ratio']:.2f}x")
    record("rollout_scale", figures, headline=headline, goal=f"driver peak RSS at {large} <= {GOAL_RATIO}x at {small}",
           met=got["ratio"] <= GOAL_RATIO)


if __name__ == "__main__":
    main()

"""PairRM best/worst selection: two pivots (``scorer.comparisons: pivots``) against the full ranking.

    python bench/pairrm_select.py [--prompts 256] [--samples 5] [--batch 32] [--repeats 3] [--json bench/results.json]

Prints prompts/s of (a) a bare ``Blender.rank`` loop (every ordered pair, what selection needed before), (b) the
same loop through ``PairRMScorer(comparisons="pivots")`` (2(N-1) one-order passes per prompt, all in one
``Blender.compare`` call per batch, sorted by length) and (c) the pivots as the Ray Data scorer stage, each
after warm-up, the three interleaved in every repeat; medians and the ratios to (a), and how often the pivots'
best and worst agree with the full ranking's on the same candidates. Candidates are the tiny policy's own
samples (vLLM, once), so lengths and words look like a rollout's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def prompts_per_s(scorer, rows: list[dict], candidates: list[list[str]], batch: int) -> tuple[float, list]:
    started, scores = time.perf_counter(), []
    for i in range(0, len(rows), batch):
        scores += scorer.score([r["prompt"] for r in rows[i:i + batch]], candidates[i:i + batch])
    return len(rows) / (time.perf_counter() - started), scores


def agreement(full: list[list[float]], piv: list[list[float]]) -> float:
    import numpy as np

    hits = sum((int(np.argmax(t)) == int(np.argmax(f))) + (int(np.argmin(t)) == int(np.argmin(f)))
               for f, t in zip(full, piv))
    return hits / (2 * len(full))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="results file (default bench/results.json)")
    args = parser.parse_args()

    import ray
    import torch
    from rollout import bare_generation, load_rows, ray_stage  # bench/rollout.py, beside this file

    from prefloop.actors.generator import VLLMGenerator
    from prefloop.actors.scorers import PairRMScorer
    from prefloop.app.dataflow.runtime import init_ray
    from prefloop.core.config import ResourcesConfig
    from prefloop.core.round_settings import EngineSettings
    from prefloop.core.sampling import SampleSpec
    from prefloop.tinyworld.assets import build_assets, default_assets_dir

    assets = build_assets(default_assets_dir())
    rows = load_rows(str(assets.policy), args.prompts, None)
    gen = VLLMGenerator(str(assets.policy), SampleSpec(args.samples, 1.0, 1.0, args.max_tokens, 0),
                        EngineSettings(max_model_len=256).as_dict())
    _, candidates = bare_generation(gen, rows, args.batch)
    gen.shutdown()
    torch.set_num_threads(1)  # what Ray gives a num_cpus=1 actor
    full = PairRMScorer(str(assets.pairrm), batch_size=args.batch)
    piv = PairRMScorer(str(assets.pairrm), batch_size=args.batch, comparisons="pivots")
    prompts_per_s(full, rows[: args.batch], candidates[: args.batch], args.batch)  # warm-up
    prompts_per_s(piv, rows[: args.batch], candidates[: args.batch], args.batch)
    init_ray(ResourcesConfig())
    scored_rows = [dict(r, candidates=c) for r, c in zip(rows, candidates)]
    kwargs = {"ranker_dir": str(assets.pairrm), "batch_size": args.batch, "comparisons": "pivots"}
    bare, local, staged, busy, agree = [], [], [], [], []
    for _ in range(args.repeats):  # all three interleaved, so drifts of the shared machine hit each alike
        rate, full_scores = prompts_per_s(full, rows, candidates, args.batch)
        bare.append(rate)
        rate, piv_scores = prompts_per_s(piv, rows, candidates, args.batch)
        local.append(rate)
        agree.append(agreement(full_scores, piv_scores))
        window, out = ray_stage(PairRMScorer, kwargs, scored_rows, args.batch, "score_s", 1.0)
        staged.append(len(out) / window)
        busy.append(sum(r["score_s"] for r in out) / window)  # the actor's share of the window spent scoring
    ray.shutdown()
    med = statistics.median
    figures = {"bench": "select", "prompts": args.prompts, "samples": args.samples, "repeats": args.repeats,
               "bare_rank_prompts_per_s": med(bare), "pivots_prompts_per_s": med(local),
               "pivots_stage_prompts_per_s": med(staged), "ratio_pivots": med(local) / med(bare),
               "ratio_stage": med(staged) / med(bare), "agreement": med(agree),
               "stage_busy_fraction": med(busy),
               "ratio_stage_paired": med(s / b for s, b in zip(staged, bare))}
    print(f"\nselection bench: {args.prompts} prompts x {args.samples} samples, {args.repeats} repeats (medians)")
    print(f"  bare Blender.rank loop      {med(bare):8.1f} prompts/s   runs {[round(x, 1) for x in bare]}")
    print(f"  pivots (same loop)          {med(local):8.1f} prompts/s   ratio {figures['ratio_pivots']:.2f}   "
          f"runs {[round(x, 1) for x in local]}")
    print(f"  pivots Ray Data stage       {med(staged):8.1f} prompts/s   ratio {figures['ratio_stage']:.2f}   "
          f"runs {[round(x, 1) for x in staged]}   (median of per-repeat ratios "
          f"{figures['ratio_stage_paired']:.2f}; scoring {100 * med(busy):.0f}% of the stage's window)")
    print(f"  best and worst agree with the full ranking on {100 * med(agree):.1f}% of picks")
    from results import record  # bench/results.py

    met = figures["ratio_stage"] >= 1.5 and figures["agreement"] >= 0.9
    record("select", figures, path=args.json, met=met,
           goal="stage >= 1.5x bare Blender.rank prompts/s at N=5, best/worst agree >= 90%",
           headline=f"pivots stage {figures['ratio_stage']:.2f}x bare rank loop "
                    f"({med(staged):.1f} vs {med(bare):.1f} prompts/s), agreement {100 * med(agree):.0f}%")


if __name__ == "__main__":
    main()

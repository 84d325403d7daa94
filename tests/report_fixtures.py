"""A committed run directory written by hand for report and status tests: manifests with the eval metrics'
keys (win_rate, scorer_win_rate, lc_win_rate, base_* ...) and answers.parquet files, in ``app/storage/rundir.py``'s layout."""

from __future__ import annotations

import json
from pathlib import Path

PROMPTS = [f"Tell me about {t}." for t in ("rivers", "cats", "bread", "trains", "music", "stars")]


def eval_manifest(r: int) -> dict:
    return {"stage": "eval", "round": r, "pairs": 40 + r, "method": "dpo", "n": len(PROMPTS),
            "win_rate": 0.5 + 0.1 * r, "win_rate_stderr": 0.05, "scorer_win_rate": 0.6 + 0.1 * r,
            "lc_win_rate": 0.45 + 0.1 * r, "lc_unstable": False, "mean_score": 0.1 * r, "mean_length": 20.0 + r,
            "mean_base_length": 18.0, "base_mean_length": 18.0, "truncation_rate": 0.0,
            "repetition_rate": 0.2 - 0.05 * r, "base_repetition_rate": 0.25, "distinct_2": 0.7,
            "judge": "function", "judge_independent": True, "swap_s": 0.02, "serve_swap_s": None,
            "timings_s": {"rollout": 30.0, "train": 40.0, "eval": 5.0, "round": 80.0 + r}}


def write_stage(root: Path, r: int, stage: str, manifest: dict, answers: list[dict] | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / f"round_{r}" / stage
    folder.mkdir(parents=True, exist_ok=True)
    if answers is not None:
        pq.write_table(pa.Table.from_pylist(answers), folder / "answers.parquet")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def make_run(root: Path, rounds: int = 2, planned: int = 3) -> list[dict]:
    """``rounds`` committed rounds (base answers, rollout, model, eval) of a ``planned``-round recipe."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipe.yaml").write_text(f"name: demo\nloop:\n  rounds: {planned}\n  serve: false\n")
    base = [{"prompt_id": f"p{i}", "prompt": p, "answer": f"base answer {i} <b>bold?</b>", "num_tokens": 10 + i}
            for i, p in enumerate(PROMPTS)]
    write_stage(root, 0, "base_answers", {"stage": "base_answers", "prompts": len(base)}, base)
    rows = []
    for r in range(rounds):
        answers = [dict(b, answer=f"round {r} answer {i} about {b['prompt'][14:-1]}", score=0.5 + r,
                        base_score=0.4, outcome="win" if i % 2 else "loss") for i, b in enumerate(base)]
        write_stage(root, r, "rollout", {"stage": "rollout"})
        write_stage(root, r, "model", {"stage": "model"})
        rows.append(eval_manifest(r))
        write_stage(root, r, "eval", rows[-1], answers)
    return rows

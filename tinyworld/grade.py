"""Grade a run directory with the tiny world's gold preference: per round, the gold win rate against the
base model's held-out answers (ties count half) and the repetition rate (share of an answer's sentences that
repeat an earlier one, averaged over answers), next to the base's.

    python -m prefloop.tinyworld.grade RUN_DIR [--show 3]

Reads ``round_0/base_answers/answers.parquet`` and every ``round_R/eval/answers.parquet``; needs no judge.
Exit status 2, with one line, for a folder without base answers (not a run, or one that has not started).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefloop.tinyworld.gold import coverage, gold_score, repetition, win_rate


def _answers(path: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    return {r["prompt_id"]: r for r in pq.read_table(path).to_pylist()}


def _mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 3) if xs else float("nan")


def summary(rows: list[dict]) -> dict:
    """Gold score, repetition, coverage and word count of a list of {prompt, answer}, averaged."""
    return {"gold": _mean([gold_score(r["prompt"], r["answer"]) for r in rows]),
            "repetition_rate": _mean([repetition(r["answer"]) for r in rows]),
            "coverage": _mean([coverage(r["prompt"], r["answer"]) for r in rows]),
            "words": _mean([float(len(r["answer"].split())) for r in rows])}


def grade_run(run_dir: Path | str) -> list[dict]:
    """One row for the base (round ``"base"``) and one per round that has committed eval answers."""
    run_dir = Path(run_dir)
    base = _answers(run_dir / "round_0" / "base_answers" / "answers.parquet")
    rows = [{"round": "base", **summary(list(base.values()))}]
    for folder in sorted(run_dir.glob("round_*/eval/answers.parquet"), key=lambda p: int(p.parts[-3][6:])):
        mine = _answers(folder)
        ids = [i for i in base if i in mine]
        rate = win_rate([base[i]["prompt"] for i in ids], [mine[i]["answer"] for i in ids],
                        [base[i]["answer"] for i in ids])
        rows.append({"round": int(folder.parts[-3][6:]), "gold_win_rate": round(rate, 3),
                     **summary([mine[i] for i in ids])})
    return rows


def examples(run_dir: Path | str, n: int = 3) -> list[dict]:
    """The first ``n`` held-out prompts with the base's and the last round's answers."""
    run_dir = Path(run_dir)
    base = _answers(run_dir / "round_0" / "base_answers" / "answers.parquet")
    rounds = sorted(run_dir.glob("round_*/eval/answers.parquet"), key=lambda p: int(p.parts[-3][6:]))
    if not rounds:
        return []
    mine = _answers(rounds[-1])
    return [{"prompt": base[i]["prompt"], "base": base[i]["answer"], "last": mine[i]["answer"]}
            for i in sorted(base)[:n] if i in mine]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefloop.tinyworld.grade", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory of a tiny-world recipe (e.g. runs/demo)")
    parser.add_argument("--show", type=int, default=3, help="held-out answers to print (base and last round)")
    args = parser.parse_args(argv)
    base = Path(args.run_dir) / "round_0" / "base_answers" / "answers.parquet"
    if not base.is_file():
        print(f"{parser.prog}: error: {args.run_dir}: no {base.relative_to(args.run_dir)} (not a run directory, "
              "or its base answers are not committed yet)", file=sys.stderr)
        return 2
    for row in grade_run(args.run_dir):
        print(json.dumps(row))
    for ex in examples(args.run_dir, args.show):
        print(f"\n{ex['prompt']}\n  base: {ex['base']}\n  last: {ex['last']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``prefloop data prepare ifeval-synth | ifeval``: prompts with IFEval instructions, and their instruction table.

- ``ifeval-synth`` (no ``--source``): prompts made from IFEval's own instruction registry. Each prompt is a topic
  (``TOPICS``) followed by 1-3 instructions that do not conflict (IFEval's ``INSTRUCTION_CONFLICTS``), each
  built by the instruction's own ``build_description`` with arguments drawn from a seeded generator. The topics
  are split once: held-out prompts use topics that no training partition ever sees. Writes ``train-<i>.jsonl``
  (``--partitions`` of ``--limit`` prompts, default 64) and ``heldout.jsonl`` (``--heldout``, default 64).
- ``ifeval`` (``--source FILE``): the real ``google/IFEval`` rows (``key``, ``prompt``, ``instruction_id_list``,
  ``kwargs``; JSONL or Parquet, as the hub's file) -> ``ifeval.jsonl``. A row whose instruction cannot be graded
  here is rejected with the checker's reason.

Each prompt row is ``{prompt_id, prompt, instruction_id_list, kwargs}``; ``instructions.jsonl`` holds the table
of every prompt (the ``ifeval`` judge's ``instructions``), ``rejected.jsonl`` the rejected rows with the reason and
``manifest.json`` the counts, the instruction ids left out and why, and the topics of each side.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path
from typing import Any

from prefloop.core import ifeval
from prefloop.core.prompts import InputError

TOPICS = (
    "Write a short story about a lighthouse keeper", "Describe how bread is made", "Explain why the sky is blue",
    "Write a poem about autumn leaves", "Give advice to a new student at a university", "Describe a busy market",
    "Write a letter to a friend who moved abroad", "Explain how a bicycle works", "Describe your ideal weekend",
    "Write a product description for a water bottle", "Explain the rules of chess to a beginner",
    "Write a blog post about learning to cook", "Describe the life cycle of a butterfly",
    "Write a speech for a school graduation", "Explain how to plant a tree", "Describe a thunderstorm",
    "Write a review of a small coffee shop", "Explain what a volcano is", "Write a story about a lost dog",
    "Give tips for saving money", "Describe a trip to the mountains", "Explain how the moon affects tides",
    "Write an advertisement for a bakery", "Describe the job of a firefighter", "Write a poem about the ocean",
    "Explain why exercise is healthy", "Write a story about a robot who learns to paint",
    "Describe a famous painting you like", "Explain how rain forms", "Write a note thanking a teacher",
    "Give instructions for making tea", "Describe a city at night", "Write a story about two rival chefs",
    "Explain how to care for a cat", "Write a cover letter for a job at a library", "Describe winter in a village",
    "Explain what photosynthesis is", "Write a riddle about time", "Give reasons to read more books",
    "Describe a football match", "Write a story about a dragon who is afraid of fire",
    "Explain how a computer stores data", "Write a complaint about a late train", "Describe your favourite meal",
    "Explain how bees make honey", "Write a pitch for a new board game", "Describe a walk in the forest",
    "Write a story about a time traveller", "Explain how vaccines work", "Give advice on keeping a diary",
    "Describe the planet Mars", "Write a song about friendship", "Explain how to change a flat tyre",
    "Write a travel guide entry for a seaside town", "Describe how a river reaches the sea",
    "Write a story set in a space station", "Explain why people keep pets", "Describe a birthday party",
    "Write an email asking for a day off", "Explain how a rainbow appears", "Write a fable about a clever fox",
    "Describe the history of the printing press", "Give tips for a job interview", "Describe a quiet library",
    "Write a limerick about a cat", "Explain how recycling helps", "Write a story about a haunted house",
    "Describe the sound of a city morning", "Explain how airplanes fly", "Write a welcome message for a website",
)
KINDS = ("ifeval-synth", "ifeval")


def _rng(*parts: Any) -> random.Random:
    return random.Random(hashlib.sha256(json.dumps(parts).encode()).hexdigest())


def _conflicts() -> dict[str, set[str]]:
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS, conflict_make

    return conflict_make({k: set(v) for k, v in INSTRUCTION_CONFLICTS.items()})


def pick_instructions(rng: random.Random, ids: list[str], conflicts: dict[str, set[str]]) -> list[str]:
    """1-3 instruction ids that do not conflict with each other (repeat_prompt, if drawn, last)."""
    want, chosen = rng.choice((1, 2, 3)), []
    for iid in rng.sample(ids, len(ids)):
        if len(chosen) == want:
            break
        if all(iid not in conflicts.get(c, ()) and c not in conflicts.get(iid, ()) for c in chosen):
            chosen.append(iid)
    return sorted(chosen, key=lambda i: i == "combination:repeat_prompt")


def build_prompt(topic: str, ids: list[str], seed: int) -> dict[str, Any]:
    """The prompt text and each instruction's arguments, from the instructions' own ``build_description``
    (they draw their arguments from the ``random`` module: seeded here, and its state restored after)."""
    registry, state = ifeval.registry(), random.getstate()
    random.seed(seed)
    try:
        parts, kwargs = [topic + "."], []
        for iid in ids:
            checker = registry[iid](iid)
            if iid == "combination:repeat_prompt":  # the request to repeat: everything said before it
                text = checker.build_description(prompt_to_repeat=" ".join(parts))
            else:
                text = checker.build_description()
            parts.append(text.strip())
            kwargs.append(dict(checker.get_instruction_args() or {}))
    finally:
        random.setstate(state)
    return {"prompt": " ".join(parts), "instruction_id_list": list(ids), "kwargs": kwargs, "topic": topic}


def split_topics(seed: int, heldout_share: float = 0.25) -> tuple[list[str], list[str]]:
    """(train topics, held-out topics): disjoint, seeded."""
    topics = list(TOPICS)
    _rng("topics", seed).shuffle(topics)
    k = max(1, round(len(topics) * heldout_share))
    return topics[k:], topics[:k]


def synth_rows(topics: list[str], n: int, side: str, seed: int, ids: list[str], seen: set[str]) -> list[dict]:
    """``n`` prompts of one side (``train-<i>`` / ``heldout``), each with its prompt_id, none in ``seen``
    (the prompts of the sides drawn before; updated)."""
    from prefloop.core.prompts import derive_prompt_id

    conflicts, rows, tries = _conflicts(), [], 0
    while len(rows) < n:
        tries += 1
        if tries > 50 * n:
            raise InputError(f"ifeval-synth: could not draw {n} distinct prompts for {side}")
        rng = _rng(side, seed, tries)
        row = build_prompt(rng.choice(topics), pick_instructions(rng, ids, conflicts), rng.randrange(2**31))
        pid = derive_prompt_id([{"role": "user", "content": row["prompt"]}])
        if pid not in seen:
            seen.add(pid)
            rows.append({"prompt_id": pid, **row})
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def prepare_synth(out: Path, partitions: int, per_partition: int, heldout: int, seed: int) -> dict[str, Any]:
    ids = ifeval.runnable_ids()
    train_topics, heldout_topics = split_topics(seed)
    files, table, seen = {}, [], set()
    for i in range(partitions):
        rows = synth_rows(train_topics, per_partition, f"train-{i}", seed, ids, seen)
        files[f"train-{i}.jsonl"], table = rows, table + rows
    files["heldout.jsonl"] = synth_rows(heldout_topics, heldout, "heldout", seed, ids, seen)
    table += files["heldout.jsonl"]
    info = {"train_topics": train_topics, "heldout_topics": heldout_topics, "rejected": 0}
    return write_all(out, "ifeval-synth", files, table, [], seed, info)


def left_out() -> dict[str, str]:
    return {iid: reason for iid, reason in ifeval.probe_ids().items() if reason is not None}


def write_all(out: Path, kind: str, files: dict[str, list[dict]], table: list[dict], rejected: list[dict],
              seed: int, info: dict[str, Any]) -> dict[str, Any]:
    """The prompt files, ``instructions.jsonl``, ``rejected.jsonl`` and ``manifest.json``; a prompt_id twice is an
    error (the judge could not tell the prompts apart)."""
    seen: set[str] = set()
    for r in table:
        if r["prompt_id"] in seen:
            raise InputError(f"{kind}: prompt_id {r['prompt_id']!r} appears twice (two rows of one key, or of one "
                             "prompt); nothing written")
        seen.add(r["prompt_id"])
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        _write_jsonl(out / name, rows)
    _write_jsonl(out / "instructions.jsonl", [{k: r[k] for k in ("prompt_id", "instruction_id_list", "kwargs")}
                                              for r in table])
    _write_jsonl(out / "rejected.jsonl", rejected)
    used = sorted({i for r in table for i in r["instruction_id_list"]})
    manifest = {"kind": kind, "seed": seed, "files": {n: len(r) for n, r in files.items()},
                "instruction_ids_used": used, "instruction_ids_left_out": left_out(), **info}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def read_source(path: Path) -> list[tuple[str, Any]]:
    """(location, row) of a JSONL or Parquet file of the google/IFEval schema."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"row {i + 1}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as err:
                out.append((f"line {n}", err))
    return out


def prepare_ifeval(source: Path, out: Path, seed: int) -> dict[str, Any]:
    """The real IFEval rows -> ``ifeval.jsonl``; rows that cannot be graded here -> ``rejected.jsonl``."""
    allowed, kept, rejected = set(ifeval.runnable_ids()), [], []
    for loc, row in read_source(source):
        def reject(field: str, reason: str) -> None:
            rejected.append({"file": str(source), "location": loc, "field": field, "reason": reason,
                             "raw": json.dumps(row, default=str)[:500]})

        if isinstance(row, Exception):
            reject("", f"not JSON: {row}")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("key"), (int, str)):
            reject("key", "missing or not an integer / string")
            continue
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            reject("prompt", "missing or empty")
            continue
        try:
            pid, inst = ifeval.parse_row({**row, "prompt_id": f"ifeval-{row['key']}"}, loc, allowed)
        except ValueError as err:
            field = str(err).split("field '", 1)[-1].split("'", 1)[0] if "field '" in str(err) else ""
            reject(field, str(err).split(": ", 1)[-1])
            continue
        kept.append({"prompt_id": pid, "prompt": row["prompt"], "instruction_id_list": list(inst.ids),
                     "kwargs": [dict(k) for k in inst.kwargs]})
    info = {"source": str(source), "read": len(kept) + len(rejected), "rejected": len(rejected)}
    return write_all(out, "ifeval", {"ifeval.jsonl": kept}, kept, rejected, seed, info)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heldout", type=int, default=64, help="ifeval-synth: held-out prompts (default 64)")


def cmd(args: argparse.Namespace) -> int:
    """``prefloop data prepare ifeval-synth | ifeval`` (dispatched from app/data/data_prepare.py)."""
    out = Path(args.out)
    if args.kind == "ifeval":
        if len(args.source) != 1:
            raise InputError("ifeval takes one --source: a google/IFEval file (JSONL or Parquet)")
        m = prepare_ifeval(Path(args.source[0]), out, args.seed)
        print(f"ifeval: read {m['read']}, kept {m['files']['ifeval.jsonl']}, rejected {m['rejected']} in {out}")
    else:
        if args.source:
            raise InputError("ifeval-synth takes no --source: its prompts come from IFEval's instruction registry")
        m = prepare_synth(out, args.partitions, args.limit or 64, args.heldout, args.seed)
        print(f"ifeval-synth: {', '.join(f'{n} {k}' for n, k in m['files'].items())} in {out}")
    for iid, reason in m["instruction_ids_left_out"].items():
        print(f"  left out {iid}: {reason}")
    return 1 if m["rejected"] and not any(m["files"].values()) else 0

"""``prefloop data prepare KIND --source SRC --out DIR``: the cards' data, in prefloop's (TRL's) columns, in partitions.

Kinds (the converters are pure functions in ``core/data_sources.py`` and ``core/data_archangel.py``):

    ultrafeedback-prompts  ultrafeedback_binarized (split train_prefs) or openbmb/UltraFeedback -> prompts-<i>
    snorkel-pairs          Snorkel-Mistral-PairRM-DPO-Dataset: split train_iteration_<n> -> partition n-1:
                           prefs-<i> (DPO), kto-<i> (chosen desirable / rejected undesirable), prompts-<i>
    archangel-mix          hh=SRC shp=SRC oasst=SRC (any of them) -> prefs-<i>, kto-<i>, with a ``dataset`` column
    lmsys-first-turn       lmsys-chat-1m: English first user turns, not flagged -> prompts-<i> (--limit 10000)
    alpaca-eval            AlpacaEval's 805 instructions (split eval) -> prompts-0, the held-out set

Every file is ``<name>-<i>.parquet`` for partition i in 0 .. K-1 (``--partitions K``, by a seeded hash of the
prompt_id: disjoint, covering, stable for a seed whatever the source's order; a prompt's pairs stay together).
Snorkel's per-iteration splits are its partitions as the card made them (``--partitions`` re-splits one
split instead). Duplicated prompts are rejected naming the row they repeat (pair kinds: exact repeats of a
pair; a prompt with several different pairs keeps them, in one partition). ``--limit N`` keeps the N rows of
lowest seeded hash. Beside the partitions: ``rejected.jsonl`` (file, row, field, reason, the raw line) and
``manifest.json`` (counts: read = kept + rejected + not_selected, per partition and per source; the source's
fingerprint; ``contents``: every file of the folder).

Outputs cannot go stale: everything is written into a fresh folder beside ``--out`` and renamed into place, and a
non-empty ``--out`` is refused unless ``--force``, which replaces it whole. Keeping 0 rows exits 1 with the top
rejection reasons.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from prefloop.app.data import ifeval_prompts
from prefloop.app.data.data_source import Source, open_source
from prefloop.core import data_archangel as arch
from prefloop.core import data_sources as ds
from prefloop.core.partition import select_first, split
from prefloop.core.prompts import InputError

log = logging.getLogger(__name__)
KINDS = ("ultrafeedback-prompts", "snorkel-pairs", "archangel-mix", "lmsys-first-turn", "alpaca-eval")
DEFAULT_SPLIT = {"ultrafeedback-prompts": "train_prefs", "lmsys-first-turn": "train", "alpaca-eval": "eval",
                 "hh": "train", "shp": "train", "oasst": "train"}
PROMPT_COLUMNS = ("prompt_id", "prompt", "messages")
ROW_CONVERTERS: dict[str, Callable[[Any], list[dict]]] = {
    "ultrafeedback-prompts": ds.ultrafeedback_prompt_row, "lmsys-first-turn": ds.lmsys_first_turn_row,
    "alpaca-eval": ds.alpaca_eval_row, "hh": arch.hh_pair_row, "shp": arch.shp_pair_row}


def pick_split(source: Source, wanted: str | None, default: str) -> str:
    """``--split``, else the kind's default split, else the source's only split."""
    if wanted:
        return wanted
    if default in source.splits or len(source.splits) != 1:
        return default
    return next(iter(source.splits))


def convert_source(kind: str, source: Source, split_name: str, seed: int) -> ds.Converted:
    rows = source.rows(split_name)
    if kind == "oasst":
        return arch.oasst_pairs(rows)
    conv = ds.convert(rows, ROW_CONVERTERS[kind])
    if kind == "shp":
        conv = arch.cap_pairs(conv, arch.SHP_MAX_PAIRS, seed)
    return conv


def dedupe(conv: ds.Converted, paired: bool) -> ds.Converted:
    """Prompts: one row per prompt text. Pairs: one row per (prompt, chosen, rejected)."""
    if paired:
        return ds.drop_duplicates(conv, lambda r: json.dumps([r["prompt_id"], r["chosen"], r["rejected"]]), "pair")
    return ds.drop_duplicates(conv, ds.prompt_text_key, "prompt")


def snorkel_partitions(source: Source, wanted: str | None) -> list[str]:
    """The card's per-iteration training splits, in iteration order (or the one split asked for)."""
    if wanted:
        return [wanted]
    iters = sorted((int(m.group(1)), s) for s in source.splits if (m := re.fullmatch(r"train_iteration_(\d+)", s)))
    if not iters:
        return [pick_split(source, None, "train_iteration_1")]
    return [s for _, s in iters]


def _prompt_only(r: dict) -> dict:
    return {k: r[k] for k in PROMPT_COLUMNS}


def write_table(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    """Parquet; an empty partition keeps its column names (as strings) so readers see the schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        pq.write_table(pa.table({c: pa.array([], pa.string()) for c in columns}), path)
        return
    names = list(dict.fromkeys(k for r in rows for k in r))  # every row's columns (from_pylist takes the first's)
    table = pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows])
    pq.write_table(table, path)


def check_out(out: Path, force: bool) -> None:
    """``--out`` must be a new or empty folder, or (``force``) a folder to replace whole."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"--out {out}: folder is not empty; add --force to replace it whole, or choose a new folder")


def prepare(kind: str, sources: dict[str, str], out: Path, partitions: int = 1, seed: int = 0,
            limit: int | None = None, split_name: str | None = None, config: str | None = None,
            force: bool = False) -> dict:
    """Build ``out``'s partitions, rejected.jsonl and manifest.json; return the manifest."""
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
    if partitions < 1:
        raise InputError(f"--partitions must be >= 1, got {partitions}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    out = Path(out)
    check_out(out, force)
    paired = kind in ("snorkel-pairs", "archangel-mix")
    conv, fingerprints, per_source, parts = ds.Converted(), {}, {}, None
    for name, spec in sources.items():
        source = open_source(spec, split_name, config)
        fingerprints[name] = {"spec": spec, **source.fingerprint}
        if kind == "snorkel-pairs":
            splits = snorkel_partitions(source, split_name)
            got = [ds.convert(source.rows(s), ds.snorkel_pair_row) for s in splits]
            per_source[name] = {"splits": splits, "read": sum(len(g.rows) + len(g.rejected) for g in got)}
            for i, g in enumerate(got):
                for r in g.rows:
                    r["partition"] = i
                conv.rows += g.rows
                conv.rejected += g.rejected
                conv.kept_rows += g.kept_rows
            if len(splits) > 1 and partitions == 1:
                parts = len(splits)
            continue
        sub = name if kind == "archangel-mix" else kind
        split_used = pick_split(source, split_name, DEFAULT_SPLIT[sub])
        got = convert_source(sub, source, split_used, seed)
        if kind == "archangel-mix":
            for r in got.rows:
                r["dataset"] = name
        per_source[name] = {"split": split_used, "read": got.kept_rows + len(got.rejected)}
        conv.rows += got.rows
        conv.rejected += got.rejected
        conv.kept_rows += got.kept_rows
    # Snorkel: a prompt in two iterations would reach two rounds; the first iteration keeps it.
    conv = ds.drop_duplicates(conv, ds.prompt_text_key, "prompt") if kind == "snorkel-pairs" else dedupe(conv, paired)
    kept, not_selected = select_first(conv.rows, limit, seed)
    for name in per_source:  # after duplicates and --limit, so the per-source counts add up to counts.kept
        mine = [r for r in kept if len(per_source) == 1 or r.get("dataset") == name]
        per_source[name]["kept"] = len({r["source_row"] for r in mine})
    if parts is not None:  # the card's own per-iteration partitions
        groups = [[r for r in kept if r["partition"] == i] for i in range(parts)]
    else:
        groups = split(kept, partitions, seed)
    return write_fresh(kind, out, groups, conv, not_selected, {
        "kind": kind, "sources": fingerprints, "per_source": per_source, "seed": seed, "limit": limit,
        "partitioned_by": "source splits (the card's iterations)" if parts is not None else "sha256(seed, prompt_id)"})


def write_fresh(kind: str, out: Path, groups: list[list[dict]], conv: ds.Converted, not_selected: list[dict],
                info: dict[str, Any]) -> dict:
    """``write_outputs`` into a new folder beside ``out``, then renamed into place (replacing ``out`` whole)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = out.parent / f".{out.name}.partial-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    try:
        manifest = write_outputs(kind, fresh, groups, conv, not_selected, info)
        if out.exists():
            out.rename(old)
        fresh.rename(out)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    log.info("%s: %d read, %d kept, %d rejected, %d not selected -> %d partitions in %s", kind,
             manifest["counts"]["read"], manifest["counts"]["kept"], manifest["counts"]["rejected"],
             manifest["counts"]["not_selected"], manifest["partitions"], out)
    return manifest


def reason_key(r: Any) -> str:
    """A rejection's reason as counted in the manifest: whole, duplicates without the row they repeat."""
    return f"{r.field}: {r.reason.split(' of ')[0] if r.reason.startswith('duplicate') else r.reason}"


def write_outputs(kind: str, out: Path, groups: list[list[dict]], conv: ds.Converted, not_selected: list[dict],
                  info: dict[str, Any]) -> dict:
    files: dict[str, list[str]] = {}
    sizes = []
    for i, rows in enumerate(groups):
        for r in rows:
            r.pop("partition", None)
        tables: dict[str, tuple[list[dict], tuple[str, ...]]] = {}
        if kind in ("snorkel-pairs", "archangel-mix"):
            if kind == "snorkel-pairs":  # the card's prompts of that iteration, for online rounds
                tables["prompts"] = ([_prompt_only(r) for r in rows], PROMPT_COLUMNS)
            tables["prefs"] = (rows, PROMPT_COLUMNS + ("chosen", "rejected"))
            tables["kto"] = (arch.unpaired(rows), PROMPT_COLUMNS + ("completion", "label"))
        else:
            tables["prompts"] = (rows, PROMPT_COLUMNS)
        for name, (table_rows, columns) in tables.items():
            path = out / f"{name}-{i}.parquet"
            write_table(path, table_rows, columns)
            files.setdefault(name, []).append(path.name)
        sizes.append({"rows": len(rows), "prompts": len({r["prompt_id"] for r in rows}),
                      **({"kto_rows": len(tables["kto"][0])} if "kto" in tables else {})})
    with open(out / "rejected.jsonl", "w", encoding="utf-8") as fh:
        for r in conv.rejected:
            fh.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    reasons: dict[str, int] = {}
    for r in conv.rejected:
        reasons[reason_key(r)] = reasons.get(reason_key(r), 0) + 1
    read = conv.kept_rows + len(conv.rejected)
    contents = sorted([f for names in files.values() for f in names] + ["rejected.jsonl", "manifest.json"])
    manifest = {**info, "partitions": len(groups), "files": files, "contents": contents,
                "counts": {"read": read, "kept": conv.kept_rows - len({r["source_row"] for r in not_selected}),
                           "rejected": len(conv.rejected), "not_selected": len({r["source_row"] for r in not_selected}),
                           "output_rows": sum(s["rows"] for s in sizes), "per_partition": sizes,
                           "rejected_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return manifest


def parse_sources(kind: str, values: list[str]) -> dict[str, str]:
    """``--source SRC`` (one source), or for archangel-mix ``--source hh=SRC --source shp=SRC ...``."""
    if not values:
        raise InputError("--source is required")
    if kind != "archangel-mix":
        if len(values) != 1:
            raise InputError(f"{kind} takes one --source, got {len(values)}")
        return {kind: values[0]}
    sources = {}
    for v in values:
        name, eq, spec = v.partition("=")
        if not eq or name not in ("hh", "shp", "oasst"):
            raise InputError(f"--source {v!r}: archangel-mix takes hh=SRC, shp=SRC and/or oasst=SRC")
        sources[name] = spec
    return sources


def cmd_data(args: argparse.Namespace) -> int:
    """``prefloop data prepare ...`` (registered by app/front/cli_parser.py); exit 1 when no row was kept."""
    if args.kind in ifeval_prompts.KINDS:  # prompts with IFEval instructions: app/data/ifeval_prompts.py
        return ifeval_prompts.cmd(args)
    manifest = prepare(args.kind, parse_sources(args.kind, args.source), Path(args.out), args.partitions, args.seed,
                       args.limit, args.split, args.config, args.force)
    c = manifest["counts"]
    print(f"{args.kind}: read {c['read']}, kept {c['kept']}, rejected {c['rejected']}, not selected "
          f"{c['not_selected']}; {manifest['partitions']} partition(s) in {args.out}")
    if c["kept"] == 0:
        top = "; ".join(f"{n} x {reason}" for reason, n in list(c["rejected_by_reason"].items())[:3])
        print(f"prefloop: data prepare kept no row of {c['read']} read"
              f"{' (top reasons: ' + top + ')' if top else ' (the source is empty)'}; "
              f"see {Path(args.out) / 'rejected.jsonl'}", file=sys.stderr)
        return 1
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``prefloop data prepare``'s options (the parser is app/front/cli_parser.py)."""
    p.add_argument("kind", choices=KINDS + ifeval_prompts.KINDS, help="which public dataset the source is")
    p.add_argument("--source", action="append", default=[], help="file, dataset dir or hub name (required but "
                   "for ifeval-synth); archangel-mix: hh=SRC / shp=SRC / oasst=SRC (repeatable)")
    p.add_argument("--out", required=True, help="output folder: new or empty (or replaced whole with --force)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out whole")
    p.add_argument("--partitions", type=int, default=1, help="K disjoint partitions")
    p.add_argument("--seed", type=int, default=0, help="seed of the partition and --limit hashes")
    p.add_argument("--limit", type=int, default=None, help="keep N >= 1 rows (lowest seeded hash); None: all")
    p.add_argument("--split", default=None, help="the source split to read; None: the kind's")
    p.add_argument("--config", default=None, help="hub dataset config name (e.g. alpaca_eval)")
    ifeval_prompts.add_arguments(p)

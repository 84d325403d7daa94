"""Where every benchmark leaves its figures: ``bench/results.json``, and the README's table built from it.

Each bench calls ``record(name, figures, goal=...)`` at the end: the figures (medians, ratios), the exact command
that produced them, the date and the machine go under ``name`` in ``bench/results.json`` (other benches' entries
are kept). ``python bench/results.py --readme`` rewrites the table between the ``<!-- bench:begin -->`` and
``<!-- bench:end -->`` markers of README.md from that file, so the README shows the latest figures measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def record(name: str, figures: dict[str, Any], *, headline: str, goal: str | None = None,
           met: bool | None = None, path: Path | str | None = None) -> dict[str, Any]:
    """Store one benchmark's figures under ``name``. ``headline``: the one-line result the README shows;
    ``goal``/``met``: the target it is measured against and whether this run met it."""
    path = Path(path) if path else RESULTS
    results = json.loads(path.read_text()) if path.is_file() else {}
    entry = {"headline": headline, "goal": goal, "met": met, "figures": figures,
             "command": "python " + " ".join(shlex.quote(a) for a in [_rel(sys.argv[0]), *sys.argv[1:]]),
             "date": datetime.date.today().isoformat(), "machine": machine()}
    results[name] = entry
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"figures written to {path} under {name!r}")
    return entry


def _rel(script: str) -> str:
    try:
        return str(Path(script).resolve().relative_to(ROOT))
    except ValueError:
        return script


def table(results: dict[str, Any]) -> str:
    """The README's Markdown table of the latest figures."""
    lines = ["| benchmark | latest result | goal | met | command | measured |", "| --- | --- | --- | --- | --- | --- |"]
    for name in sorted(results):
        e = results[name]
        met = {True: "yes", False: "no", None: "-"}[e.get("met")]
        lines.append(f"| {name} | {e['headline']} | {e.get('goal') or '-'} | {met} | `{e['command']}` | "
                     f"{e['date']}, {e['machine']} |")
    return "\n".join(lines)


def update_readme(readme: Path = ROOT / "README.md", path: Path = RESULTS) -> None:
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} markers to put the table between")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    results = json.loads(path.read_text()) if path.is_file() else {}
    readme.write_text(f"{head}{BEGIN}\n{table(results)}\n{END}{tail}", encoding="utf-8")
    print(f"{readme}: benchmark table rewritten from {path} ({len(results)} entries)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's benchmark table")
    args = parser.parse_args()
    if args.readme:
        update_readme()
    else:
        print(table(json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}))

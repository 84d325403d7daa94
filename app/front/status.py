"""``prefloop status RUN_DIR``: what a run has committed and what its driver is doing now.

Read-only and cheap, for a local run directory or a URI (``s3://``, ``gs://``, ``file://``: read in place
through ``pyarrow.fs``, nothing is pulled): the committed stages of every round (a stage is committed when its
``manifest.json`` exists, see ``app/storage/rundir.py``), the driver's heartbeat (``app/storage/heartbeat.py``: the stage
running now, its progress and age; *stale* when the driver stopped beating, i.e. it died), the last committed
round's figures (its ``round_R/eval/manifest.json``) and where the report is. Exit status 1 when the heartbeat
is stale, corrupt or says the run failed, else 0. A folder that is not a run (no ``recipe.yaml``, no
``round_R/``, no heartbeat) is a user error (exit 2) that names the runs below it or the run above it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from prefloop.app.storage.heartbeat import HEARTBEAT, STALE_S, liveness, read_heartbeat
from prefloop.app.storage.run_mirror import MANIFEST, is_uri
from prefloop.app.storage.rundir import upgrade_manifest
from prefloop.core.prompts import InputError

ROUND_DIR = re.compile(r"^round_(\d+)$")
STAGE_ORDER = ("base_answers", "rollout", "model", "leaderboard", "eval")


def _open(run_dir: str) -> tuple[Any, str]:
    from pyarrow import fs

    if is_uri(run_dir):
        try:
            return fs.FileSystem.from_uri(run_dir.rstrip("/"))
        except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid: an unknown scheme or a bad URI
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"{run_dir}: cannot open this URI ({first}); use a local path or s3://, gs://, "
                             "hdfs://, file://") from None
    return fs.LocalFileSystem(), Path(run_dir).expanduser().resolve().as_posix()


def _is_run(path: Path) -> bool:
    return (path / "recipe.yaml").is_file() or (path / HEARTBEAT).is_file() or \
        any(ROUND_DIR.match(p.name) and p.is_dir() for p in path.iterdir())


def not_a_run(run_dir: str) -> InputError:
    """'Not a run directory' naming the run that holds it, or the runs below it (two levels)."""
    if is_uri(run_dir):
        return InputError(f"not a run directory: {run_dir} (no recipe.yaml, round_R/ or heartbeat.json in it)")
    path = Path(run_dir).expanduser().resolve()
    above = next((p for p in path.parents if _is_run(p)), None)
    below = [] if above else sorted(p for p in (*path.glob("*"), *path.glob("*/*")) if p.is_dir() and _is_run(p))
    near = [above] if above else below[:3]
    hint = f"; did you mean {' or '.join(os.path.relpath(p) for p in near)}?" if near else \
        " (a run directory holds recipe.yaml and round_R/ folders)"
    return InputError(f"not a run directory: {run_dir}{hint}")


def _read(filesystem: Any, path: str) -> str | None:
    from pyarrow import fs

    if filesystem.get_file_info(path).type != fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as fh:
        return fh.read().decode("utf-8", errors="replace")


def read_status(run_dir: str, now: float | None = None) -> dict[str, Any]:
    """Everything ``format_status`` prints, as a dict (``--json``)."""
    from pyarrow import fs

    filesystem, base = _open(run_dir)
    if filesystem.get_file_info(base).type != fs.FileType.Directory:
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    committed: dict[int, list[str]] = {}
    for info in filesystem.get_file_info(fs.FileSelector(base)):
        match = ROUND_DIR.match(info.base_name)
        if info.type != fs.FileType.Directory or not match:
            continue
        stages = [st.base_name for st in filesystem.get_file_info(fs.FileSelector(info.path))
                  if st.type == fs.FileType.Directory and ".partial-" not in st.base_name
                  and filesystem.get_file_info(f"{st.path}/{MANIFEST}").type == fs.FileType.File]
        committed[int(match.group(1))] = sorted(stages, key=lambda s: (STAGE_ORDER + (s,)).index(s))
    rounds_done = sorted(r for r, stages in committed.items() if "eval" in stages)
    last_text = _read(filesystem, f"{base}/round_{rounds_done[-1]}/eval/{MANIFEST}") if rounds_done else None
    last = upgrade_manifest(json.loads(last_text or "{}")) if rounds_done else None
    hb_text = _read(filesystem, f"{base}/{HEARTBEAT}")
    hb = read_heartbeat(hb_text)
    state, age = liveness(hb, now) if hb else ("corrupt" if hb_text else "unknown", None)
    recipe = _read(filesystem, f"{base}/recipe.yaml") or ""
    if not (committed or hb_text or recipe):
        raise not_a_run(run_dir)
    planned = re.search(r"^\s+rounds:\s*(\d+)\s*$", recipe, re.M)
    reports = [f"{run_dir.rstrip('/')}/{name}" for name in ("report.md", "report.html")
               if filesystem.get_file_info(f"{base}/{name}").type == fs.FileType.File]
    return {"run_dir": run_dir, "rounds_planned": int(planned.group(1)) if planned else None,
            "rounds_committed": rounds_done, "stages": {str(r): s for r, s in sorted(committed.items())},
            "driver": state, "heartbeat_age_s": age, "heartbeat": hb, "last_round": last, "reports": reports}


def _progress(hb: dict[str, Any], now: float) -> str:
    """``round 2 rollout: prompts 37/128, 812 tok/s, for 75 s`` (the stage's own prefix dropped from the part)."""
    where = f"round {hb['round']} " if hb.get("round") is not None else ""
    stage = hb.get("stage") or "between stages"
    text = f"{where}{stage}"
    if hb.get("total"):
        part = str(hb.get("progress") or "")
        part = part[len(stage) + 2:] if part.startswith(f"{stage}: ") else part
        text += f": {part} {hb.get('done', 0)}/{hb['total']}".replace(":  ", ": ")
    if hb.get("tokens_per_s"):
        text += f", {hb['tokens_per_s']:.0f} tok/s"
    if hb.get("stage_started"):
        text += f", for {_ago(now - float(hb['stage_started']))}"
    return text


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60} s" if seconds < 7200 \
        else f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _figures(m: dict[str, Any]) -> str:
    parts = [f"{m.get('pairs', '?')} pairs" if m.get("pairs") is not None else None]
    if m.get("win_rate") is not None:
        parts.append(f"win rate {m['win_rate']:.3f} ± {m.get('win_rate_stderr') or 0:.3f}"
                     + (f" (eval judge: {m['judge']})" if m.get("judge") else ""))
    for key, name in (("scorer_win_rate", "training judge"), ("lc_win_rate", "length-controlled")):
        if m.get(key) is not None:
            parts.append(f"{name} {m[key]:.3f}")
    if m.get("mean_length") is not None:
        base = m.get("base_mean_length", m.get("mean_base_length"))
        parts.append(f"length {m['mean_length']:.1f}" + (f" (base {base:.1f})" if base is not None else ""))
    if m.get("repetition_rate") is not None:
        parts.append(f"repetition {m['repetition_rate']:.3f}")
    return ", ".join(p for p in parts if p)


def format_status(st: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    done, planned = st["rounds_committed"], st["rounds_planned"]
    lines = [f"run:        {st['run_dir']}",
             f"committed:  {len(done)}{f' of {planned}' if planned else ''} rounds"
             + (f" (round {', '.join(map(str, done))})" if done else "")]
    partial = {r: s for r, s in st["stages"].items() if "eval" not in s and s}
    for r, stages in partial.items():
        lines.append(f"            round {r}: {', '.join(stages)} committed")
    hb, state = st["heartbeat"], st["driver"]
    if state == "corrupt":
        lines.append(f"driver:     CORRUPT heartbeat ({HEARTBEAT} is not a JSON object): cannot tell whether a "
                     "driver runs; a live driver rewrites it within seconds")
    elif hb is None:
        lines.append("driver:     no heartbeat (a run started before heartbeats, or none yet)")
    elif state == "running":
        lines.append(f"driver:     running (pid {hb.get('pid')} on {hb.get('host')}, beat {st['heartbeat_age_s']:.0f} s ago)")
        lines.append(f"now:        {_progress(hb, now)}")
    elif state == "stale":
        lines.append(f"driver:     STALE: no heartbeat for {_ago(st['heartbeat_age_s'])} (pid {hb.get('pid')} on "
                     f"{hb.get('host')}); the driver died. Last seen in {_progress(hb, float(hb.get('time', now)))}. "
                     "Run the same command again to resume from the last committed stage.")
    else:
        lines.append(f"driver:     {state} {_ago(now - float(hb.get('ended') or hb.get('time', now)))} ago"
                     + (f": {hb['error']}" if hb.get("error") else ""))
    if st["last_round"]:
        lines.append(f"round {st['last_round'].get('round', done[-1])}:    {_figures(st['last_round'])}")
    if hb and hb.get("driver_log"):
        lines.append(f"driver log: {hb['driver_log']}")
    lines.append(f"report:     {'  ·  '.join(st['reports']) if st['reports'] else 'none yet (written when a round commits)'}")
    return "\n".join(lines)


def run_status(run_dir: str, as_json: bool = False) -> int:
    st = read_status(run_dir)
    print(json.dumps(st, default=str, indent=1) if as_json else format_status(st))
    return 1 if st["driver"] in ("stale", "failed", "corrupt") else 0


__all__ = ["read_status", "format_status", "run_status", "STALE_S"]

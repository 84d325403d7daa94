"""``RUN_DIR/report.html``: the run's report as one self-contained page (inline CSS, SVG and JS; no network).

Written by ``report.write_report`` beside ``report.md``, from the committed rounds only:
- the round table (the eval manifests' figures; keys a manifest lacks show as "-");
- plots per round: win rate against the base model by the eval judge, by the training judge and length-
  controlled; mean answer length (round and base); repetition rate (round and base);
- for a sample of held-out prompts (``SAMPLE`` of them, evenly spread over the held-out set), the base
  model's answer and each round's answer side by side with their scores, and a text box that filters the
  prompts (inline JS; ``report.html#filter=rivers`` opens it filtered).
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from prefloop.app.storage.rundir import RunDir
from prefloop.core.svg_chart import line_chart

SAMPLE = 24
BASE_STAGE, EVAL_STAGE = "base_answers", "eval"
COLUMNS = (  # (header, manifest key, format); win_rate also shows its standard error
    ("round", "round", "{}"), ("method", "method", "{}"), ("pairs", "pairs", "{}"),
    ("win rate (eval judge)", "win_rate", "{:.3f}"), ("win rate (training judge)", "scorer_win_rate", "{:.3f}"),
    ("LC win rate", "lc_win_rate", "{:.3f}"), ("mean length", "mean_length", "{:.1f}"),
    ("base length", "base_mean_length", "{:.1f}"), ("repetition", "repetition_rate", "{:.3f}"),
    ("truncated", "truncation_rate", "{:.3f}"), ("distinct-2", "distinct_2", "{:.3f}"),
    ("swap s", "swap_s", "{:.3f}"), ("round s", "round_s", "{:.0f}"),
)
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:13px}table.rounds{border-collapse:collapse;font-size:13px}
table.rounds th,table.rounds td{border:1px solid #ccc;padding:4px 8px;text-align:right}
table.rounds th{background:#eef3f8}.charts{display:flex;flex-wrap:wrap;gap:16px}
#filter{font-size:14px;padding:6px;width:360px}.card{border:1px solid #ddd;border-radius:6px;margin:12px 0;padding:8px}
.card h3{font-size:14px;margin:0 0 6px;background:#f3f6fa;padding:6px}.answers{display:grid;gap:8px;
grid-template-columns:repeat(auto-fill,minmax(260px,1fr))}.answer{border-left:4px solid #ccc;padding:4px 8px}
.answer pre{white-space:pre-wrap;font-size:12px;margin:4px 0}.answer.win{border-color:#2ca02c}
.answer.loss{border-color:#d62728}.answer.tie{border-color:#999}.who{font-weight:bold;font-size:12px}
.scores{font-size:11px;color:#555}
"""
JS = """
(function(){var box=document.getElementById('filter'),cards=document.querySelectorAll('.card'),
count=document.getElementById('shown');function apply(){var q=box.value.toLowerCase(),n=0;
cards.forEach(function(c){var hit=c.getAttribute('data-prompt').indexOf(q)>=0;c.style.display=hit?'':'none';
if(hit){n++;}});count.textContent=n+' of '+cards.length+' prompts';}box.addEventListener('input',apply);
if(location.hash.indexOf('#filter=')===0){box.value=decodeURIComponent(location.hash.slice(8));}apply();})();
"""


def _cell(m: dict[str, Any], key: str, fmt: str) -> str:
    value = m.get(key)
    if key == "round_s":
        value = (m.get("timings_s") or {}).get("round")
    if key == "base_mean_length" and value is None:
        value = m.get("mean_base_length")  # the manifests' name before the eval metrics' base_* keys
    if value is None:
        return "-"
    text = fmt.format(value) if isinstance(value, (int, float)) or fmt == "{}" else str(value)
    if key == "win_rate" and m.get("win_rate_stderr") is not None:
        text += f" ± {m['win_rate_stderr']:.3f}"
    return escape(text)


def round_table(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h, _, _ in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{_cell(m, k, f)}</td>" for _, k, f in COLUMNS) + "</tr>" for m in rows)
    return f'<table class="rounds" id="rounds"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def charts(rows: list[dict[str, Any]]) -> str:
    xs = [int(m["round"]) for m in rows]

    def col(key: str, alt: str | None = None) -> list[float | None]:
        return [m.get(key, m.get(alt) if alt else None) for m in rows]

    judge = rows[-1].get("judge") if rows else None
    return "".join([
        line_chart("win rate vs base", xs, [(f"eval judge{f' ({judge})' if judge else ''}", col("win_rate")),
                                            ("training judge", col("scorer_win_rate")),
                                            ("length-controlled", col("lc_win_rate"))], (0.0, 1.0), ref=0.5),
        line_chart("mean answer length (tokens)", xs, [("round", col("mean_length")),
                                                       ("base", col("base_mean_length", "mean_base_length"))]),
        line_chart("repetition rate", xs, [("round", col("repetition_rate")),
                                          ("base", col("base_repetition_rate"))]),
    ])


def _scores(a: dict[str, Any]) -> str:
    """Every score-like field of an answer row (the judge's and the eval judge's), and the outcome."""
    keys = [k for k in a if ("score" in k or "outcome" in k) and not isinstance(a[k], (list, dict))]
    return " · ".join(f"{k} {a[k]:.3f}" if isinstance(a[k], float) else f"{k} {a[k]}" for k in keys)


def verdict(a: dict[str, Any]) -> str:
    """The outcome a round's answer card is coloured by: the eval judge's against the base answer (the independent
    one, as the report's headline win rate), the training judge's where the row has no eval verdict."""
    return str(a.get("eval_outcome") or a.get("outcome") or "")


def sample_ids(ids: list[str], n: int = SAMPLE) -> list[str]:
    """Up to ``n`` ids evenly spread over the list (first and last included), in order."""
    if len(ids) <= n:
        return list(ids)
    return [ids[round(i * (len(ids) - 1) / (n - 1))] for i in range(n)]


def answer_cards(run: RunDir, rows: list[dict[str, Any]]) -> str:
    from prefloop.app.storage.tables import read_parquet_rows

    base_path = run.stage_dir(0, BASE_STAGE) / "answers.parquet"
    base = {b["prompt_id"]: b for b in read_parquet_rows(base_path)} if base_path.is_file() else {}
    per_round = {}
    for m in rows:
        path = run.stage_dir(int(m["round"]), EVAL_STAGE) / "answers.parquet"
        per_round[int(m["round"])] = {a["prompt_id"]: a for a in read_parquet_rows(path)} if path.is_file() else {}
    order = list(base) or list(next(iter(per_round.values()), {}))
    cards = []
    for pid in sample_ids(order):
        first = base.get(pid) or next((d[pid] for d in per_round.values() if pid in d), {})
        prompt = str(first.get("prompt", ""))
        cells = []
        if pid in base:
            cells.append(f'<div class="answer base"><div class="who">base model</div>'
                         f'<div class="scores">{base[pid].get("num_tokens", "?")} tokens</div>'
                         f'<pre>{escape(str(base[pid].get("answer", "")))}</pre></div>')
        for r, answers in per_round.items():
            a = answers.get(pid)
            if a is None:
                continue
            cells.append(f'<div class="answer {escape(verdict(a))}"><div class="who">round {r}</div>'
                         f'<div class="scores">{a.get("num_tokens", "?")} tokens · {escape(_scores(a))}</div>'
                         f'<pre>{escape(str(a.get("answer", "")))}</pre></div>')
        cards.append(f'<div class="card" data-prompt="{escape(prompt.lower())}"><h3>{escape(prompt)}</h3>'
                     f'<div class="answers">{"".join(cells)}</div></div>')
    return "".join(cards)


def render(name: str, run_root: str, rows: list[dict[str, Any]], cards: str) -> str:
    judge = rows[-1].get("judge") if rows else None
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>prefloop: {escape(name)}</title>'
            f"<style>{CSS}</style></head><body><h1>prefloop run: {escape(name)}</h1>"
            f'<div class="meta">run directory <code>{escape(run_root)}</code> · {len(rows)} committed round(s)'
            f'{f" · eval judge: {escape(str(judge))}" if judge else ""}</div>'
            f'<h2>Rounds</h2>{round_table(rows)}<h2>Per round</h2><div class="charts" id="charts">{charts(rows)}</div>'
            f'<h2>Answers to held-out prompts</h2><div class="meta">a round\'s border: the eval judge\'s verdict '
            f'against the base model\'s answer (green win, red loss, grey tie)</div>'
            f'<input id="filter" type="search" placeholder="filter prompts">'
            f' <span id="shown"></span><div id="answers">{cards}</div>'
            f"<script>{JS}</script></body></html>\n")


def write_html(name: str, run: RunDir, rows: list[dict[str, Any]]) -> Path:
    """Write ``report.html`` (atomically, and uploaded with the run's top files); return its path."""
    return run.save_text("report.html", render(name, str(run.root), rows, answer_cards(run, rows)))

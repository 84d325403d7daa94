"""A small line chart as inline SVG text, for the self-contained HTML report (no plotting library, no network).

Pure string building: ``line_chart(title, xs, series)`` draws one line per series over integer x values (the
rounds), with axes, ticks, a legend, an optional dashed reference line (0.5 for win rates) and a tooltip
(``<title>``) on every point. Values of ``None`` are gaps (a metric a round did not record).
"""

from __future__ import annotations

from html import escape
from typing import Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
W, H = 360, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 30, 58


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = (hi - lo) / (n - 1)
    return [lo + i * step for i in range(n)]


def _range(values: list[float], fixed: tuple[float, float] | None) -> tuple[float, float]:
    if fixed is not None:
        return fixed
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0 if lo == 0 else lo * 0.9, hi + 1.0 if hi == 0 else hi * 1.1
    pad = (hi - lo) * 0.08
    return min(lo - pad, lo) if lo < 0 else max(0.0, lo - pad), hi + pad


def line_chart(title: str, xs: Sequence[int], series: Sequence[tuple[str, Sequence[float | None]]],
               y_range: tuple[float, float] | None = None, ref: float | None = None, x_label: str = "round") -> str:
    """The chart as an ``<svg>`` element; series with no value at all are left out (a note says so if none)."""
    drawn = [(name, list(ys)) for name, ys in series if any(v is not None for v in ys)]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>']
    if not drawn or not xs:
        out.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" font-size="12" fill="#888">'
                   "no data in the round manifests</text></svg>")
        return "".join(out)
    values = [v for _, ys in drawn for v in ys if v is not None] + ([ref] if ref is not None else [])
    lo, hi = _range(values, y_range)
    x0, x1 = min(xs), max(xs)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (pw / 2 if x1 == x0 else (x - x0) / (x1 - x0) * pw)

    def py(y: float) -> float:
        return TOP + ph - (y - lo) / (hi - lo) * ph

    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>')
    for t in _ticks(lo, hi):
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>'
                   f'<text x="{LEFT - 4}" y="{py(t) + 4:.1f}" text-anchor="end" font-size="10">{t:.3g}</text>')
    for x in xs:
        out.append(f'<text x="{px(x):.1f}" y="{TOP + ph + 14}" text-anchor="middle" font-size="10">{x}</text>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{TOP + ph + 27}" text-anchor="middle" font-size="11">'
               f'{escape(x_label)}</text>')
    if ref is not None and lo <= ref <= hi:
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{py(ref):.1f}" y2="{py(ref):.1f}" stroke="#888" '
                   'stroke-dasharray="4 3"/>')
    for i, (name, ys) in enumerate(drawn):
        color = PALETTE[i % len(PALETTE)]
        points = [(px(x), py(y), x, y) for x, y in zip(xs, ys) if y is not None]
        path = " ".join(f"{'M' if j == 0 else 'L'}{a:.1f},{b:.1f}" for j, (a, b, _, _) in enumerate(points))
        out.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2" class="series" '
                   f'data-series="{escape(name)}"/>')
        for a, b, x, y in points:
            out.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}">'
                       f'<title>{escape(name)}, round {x}: {y:.4g}</title></circle>')
        ly = H - 16 + (i // 2) * 12
        lx = LEFT + (i % 2) * (pw / 2)
        out.append(f'<rect x="{lx:.1f}" y="{ly - 8}" width="10" height="3" fill="{color}"/>'
                   f'<text x="{lx + 14:.1f}" y="{ly - 4}" font-size="10">{escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)

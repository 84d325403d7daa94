"""report.html: the SVG charts' geometry, the prompt sample, and the page built from a committed run."""

import re

from prefloop.app.storage.rundir import RunDir
from prefloop.app.watch.report_html import (
    render,
    round_table,
    sample_ids,
    verdict,
    write_html,
)
from prefloop.core import svg_chart
from prefloop.core.svg_chart import line_chart
from tests.builders import REPORT_PROMPTS, report_run


def test_chart_places_points_by_hand_computed_coordinates():
    svg = line_chart("win rate", [0, 1, 2], [("a", [0.0, 0.5, 1.0]), ("empty", [None, None, None])], (0.0, 1.0), 0.5)
    ph = svg_chart.H - svg_chart.TOP - svg_chart.BOTTOM  # 152
    pw = svg_chart.W - svg_chart.LEFT - svg_chart.RIGHT  # 300
    circles = [(float(x), float(y)) for x, y in re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', svg)]
    assert circles == [(48.0, 30.0 + ph), (48.0 + pw / 2, 30.0 + ph / 2), (48.0 + pw, 30.0)]
    assert svg.count('class="series"') == 1 and "empty" not in svg  # an all-None series is left out
    assert 'stroke-dasharray="4 3"' in svg and f'y1="{30 + ph / 2:.1f}"' in svg  # the 0.5 reference line
    assert "a, round 1: 0.5" in svg  # the tooltip


def test_chart_with_gaps_and_without_data():
    svg = line_chart("length", [0, 1, 2], [("round", [10.0, None, 30.0])])
    assert svg.count("<circle") == 2 and re.search(r'd="M[\d.,]+ L[\d.,]+"', svg)
    assert "no data in the round manifests" in line_chart("x", [0], [("a", [None])])


def test_sample_ids_spread_evenly():
    ids = [f"p{i}" for i in range(10)]
    assert sample_ids(ids, 4) == ["p0", "p3", "p6", "p9"]
    assert sample_ids(ids[:3], 4) == ["p0", "p1", "p2"]


def test_round_table_shows_the_eval_metrics_and_dashes_for_missing_keys():
    html = round_table([{"round": 0, "pairs": 3, "win_rate": 0.25, "win_rate_stderr": 0.1, "mean_length": 7.0,
                         "mean_base_length": 6.0, "timings_s": {"round": 12.4}}])
    cells = re.findall(r"<td>(.*?)</td>", html)
    assert cells[:9] == ["0", "-", "3", "0.250 ± 0.100", "-", "-", "7.0", "6.0", "-"]
    assert cells[-1] == "12"


def test_report_html_is_self_contained_with_table_plots_and_answers(tmp_path):
    root = tmp_path / "run"
    rows = report_run(root, rounds=2)
    path = write_html("demo", RunDir(root), rows)
    html = path.read_text()
    assert path == root / "report.html"
    assert html.count("<svg") == 3 and html.count('class="card"') == len(REPORT_PROMPTS)
    assert "0.600 ± 0.050" in html and "0.700" in html  # round 1: eval judge, training judge
    assert "round 1 answer 3 about trains" in html and "base answer 3 &lt;b&gt;bold?&lt;/b&gt;" in html  # escaped
    assert "score 1.500 · base_score 0.400 · outcome win" in html
    assert 'id="filter"' in html and "addEventListener" in html
    external = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url\(", html)
    assert external == []  # nothing fetched from anywhere
    assert re.findall(r"https?://[^\"' ]*", html) == ["http://www.w3.org/2000/svg"] * 3  # the SVG namespace only


def test_render_with_no_answers_still_renders():
    html = render("x", "/tmp/r", [], "")
    assert "0 committed round(s)" in html and html.count("no data in the round manifests") == 3


def test_answer_cards_are_coloured_by_the_eval_judges_verdict():
    # the training judge (outcome) said win where the independent eval judge said loss: the card shows the loss
    assert verdict({"outcome": "win", "eval_outcome": "loss"}) == "loss"
    assert verdict({"outcome": "tie"}) == "tie"  # no eval verdict on the row: the training judge's
    assert verdict({}) == ""

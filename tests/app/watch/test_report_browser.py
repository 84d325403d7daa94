"""report.html in a real browser: headless Chromium (Debian's ``chromium`` package, installed by ``.ci/run``).

Without Chromium these tests skip on a developer machine and FAIL under CI (``CI=true``).

The page must load with no console message (an error of the inline JS shows up as ``Uncaught ...``), its DOM
after the scripts ran must hold the round table, the three charts and the answer cards (and the filter's
count, which only the script writes), ``#filter=`` must filter, and a screenshot must not be blank. The
browser gets no network: the page is opened from a file with networking switched off.
"""

import os
import re
import shutil
import subprocess

import pytest

from prefloop.app.storage.rundir import RunDir
from prefloop.app.watch.report_html import write_html
from tests.builders import REPORT_PROMPTS, report_run

pytestmark = pytest.mark.models  # loads models in-process (no Ray): deselected by `make test-fast`

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI (``CI=true``, which .ci/run sets) must run these: there a missing browser fails them instead of skipping
REQUIRED = os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture(autouse=True)
def browser_present():
    if CHROMIUM is None:
        if REQUIRED:
            pytest.fail("chromium is not installed, and CI=true requires the browser tests: .ci/run installs Debian's "
                        "chromium when it runs as root with apt-get; install it, or run CI as root")
        pytest.skip("chromium not installed (.ci/run installs it as root)")


def chromium(tmp_path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # any network request fails
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def report(tmp_path):
    root = tmp_path / "run"
    return write_html("demo", RunDir(root), report_run(root, rounds=3))


def test_report_renders_in_chromium_with_no_console_errors(tmp_path, report):
    done = chromium(tmp_path, report.as_uri(), "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    dom = done.stdout
    assert len(re.findall(r"<tr>", dom)) == 1 + 3  # header + one row per round
    assert len(re.findall(r'<svg[^>]*class="chart"', dom)) == 3
    assert len(re.findall(r'<circle ', dom)) == 3 * 3 + 2 * 3 + 2 * 3  # win rates 3 series, length 2, repetition 2
    assert dom.count('class="card"') == len(REPORT_PROMPTS)
    assert f"{len(REPORT_PROMPTS)} of {len(REPORT_PROMPTS)} prompts" in dom  # written by the inline script: it ran
    assert "round 2 answer 1 about cats" in dom


def test_filter_from_the_url_hides_other_prompts(tmp_path, report):
    done = chromium(tmp_path, report.as_uri() + "#filter=rivers", "--dump-dom")
    assert "1 of 6 prompts" in done.stdout
    hidden = re.findall(r'<div class="card" data-prompt="([^"]+)" style="display: none;">', done.stdout)
    assert sorted(hidden) == sorted(p.lower() for p in REPORT_PROMPTS if "rivers" not in p)


def test_screenshot_is_not_blank(tmp_path, report):
    from PIL import Image

    shot = tmp_path / "report.png"
    done = chromium(tmp_path, report.as_uri(), f"--screenshot={shot}", "--window-size=1280,1600",
                    "--hide-scrollbars")
    assert shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert image.size == (1280, 1600) and len(colours) > 50  # text, table shading, chart lines and points
    chart_blue = sum(n for n, rgb in colours if rgb == (0x1F, 0x77, 0xB4))
    assert chart_blue > 100, "the charts' first series is not on the screenshot"

"""The HTML report opened in a real browser: every plot image loads, the page is not blank, and
nothing is wider than the main column at a 1280 px window."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary on PATH or at /usr/bin/chromium: apt-get install -y chromium",
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]
WIDTH = 1280

# Runs after the page's own load handler: opens every <details> (a closed fold lays out nothing),
# then measures, in CSS pixels, the page, the <main> column and every block inside it. An element
# overflows when its content is wider than its box (scrollWidth > clientWidth: a table that
# scrolls sideways) or when its box sticks out of the column.
MEASURE = """
<script>
window.addEventListener("load", function () {
  document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  var main = document.querySelector("main");
  var col = main.getBoundingClientRect();
  var blocks = [], wide = [];
  main.querySelectorAll("table, pre, figure, img, p, ul, div, details, h1, h2, h3")
    .forEach(function (el, i) {
      var r = el.getBoundingClientRect();
      var m = {tag: el.tagName.toLowerCase(), i: i, left: r.left, right: r.right,
               scroll: el.scrollWidth, client: el.clientWidth,
               text: (el.textContent || "").slice(0, 60)};
      blocks.push(m);
      if (m.scroll > m.client + 1 || r.right > col.right + 1 || r.left < col.left - 1) {
        wide.push(m);
      }
    });
  var page = document.documentElement;
  document.body.setAttribute("data-layout", JSON.stringify({
    viewport: window.innerWidth, page_scroll: page.scrollWidth, page_client: page.clientWidth,
    main_left: col.left, main_right: col.right, main_scroll: main.scrollWidth,
    main_client: main.clientWidth, tables: main.querySelectorAll("table").length,
    blocks: blocks.length, wide: wide}));
});
</script>
"""


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def layout(page: Path, work: Path, width: int = WIDTH) -> dict[str, Any]:
    """Load a copy of ``page`` with the measuring script at ``width`` px; its measurements."""
    probe = work / f"measured-{page.stem}.html"
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>", 1))
    dom = chromium(
        [
            f"--window-size={width},2000",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        work / f"profile-{page.stem}",
    )
    found = re.search(r'data-layout="([^"]*)"', dom.stdout)
    assert found, f"the measuring script did not run: {dom.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def overflow(measured: dict[str, Any]) -> list[str]:
    """What sticks out: the page wider than the window, the column wider than itself, and every
    block wider than its box or than the column (empty when the report fits)."""
    out = []
    if measured["page_scroll"] > measured["page_client"] + 1:
        out.append(
            f"page {measured['page_scroll']} px wide in a {measured['page_client']} px window"
        )
    if measured["main_scroll"] > measured["main_client"] + 1:
        out.append(
            f"main column content {measured['main_scroll']} px > {measured['main_client']} px"
        )
    out += [
        f"<{b['tag']}> #{b['i']} ({b['text']!r}): content {b['scroll']} px in a {b['client']} px box, "
        f"right edge {b['right']:.0f} px vs the column's {measured['main_right']:.0f} px"
        for b in measured["wide"]
    ]
    return out


@needs_chromium
def test_report_renders_in_headless_chromium_with_every_image_loaded(synthetic_report, tmp_path):
    html_path = synthetic_report["html"]
    url = html_path.resolve().as_uri()
    dom = chromium(["--virtual-time-budget=10000", "--dump-dom", url], tmp_path / "p1")
    found = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
    assert found, f"the load script did not run: {dom.stderr[-2000:]}"
    loaded, total = map(int, found.groups())
    assert total == len(list(synthetic_report["plots"].glob("*.png"))) and loaded == total

    shot = tmp_path / "report.png"
    chromium([f"--window-size={WIDTH},2400", f"--screenshot={shot}", url], tmp_path / "p2")
    pixels = image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, WIDTH)
    assert float(np.std(pixels)) > 0.05  # a blank page has no variation
    assert float(np.mean(pixels)) < 0.99  # not an all-white page


@needs_chromium
@pytest.mark.parametrize("report", ["synthetic_report", "micro_study_report"])
def test_nothing_is_wider_than_the_main_column_at_1280_px(report, request, tmp_path):
    paths = request.getfixturevalue(report)
    measured = layout(paths["html"], tmp_path)
    assert measured["viewport"] == WIDTH
    assert measured["tables"] >= 10 and measured["blocks"] > 50  # the whole report was measured
    assert 1000 <= measured["main_client"] <= 1100 + 2 * 16  # max-width plus padding
    assert overflow(measured) == []


@needs_chromium
def test_the_overflow_check_catches_a_too_wide_table(synthetic_report, tmp_path):
    """The same report with one table that cannot fit: a table 1600 px wide at least, and a long cell
    that may not wrap (as every cell was before cells could wrap). Both are named."""
    page = synthetic_report["html"].read_text()
    wide = (
        '<table style="min-width:1600px"><tr><td>too wide on purpose</td></tr></table>'
        '<table><tr><td style="white-space:nowrap">'
        + "unbreakable_setting_name " * 60
        + "</td></tr></table>"
    )
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace("<main>", "<main>" + wide, 1))
    problems = overflow(layout(broken, tmp_path))
    assert any("too wide on purpose" in p for p in problems), problems
    assert any("unbreakable_setting_name" in p for p in problems), problems
    assert any(p.startswith("main column content") for p in problems), problems

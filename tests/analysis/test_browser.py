"""The HTML report opened in a real browser: every plot image loads and the page is not blank."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
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


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install -y chromium")
def test_report_renders_in_headless_chromium_with_every_image_loaded(synthetic_report, tmp_path):
    html = synthetic_report["html"]
    url = html.resolve().as_uri()
    dom = chromium(["--virtual-time-budget=10000", "--dump-dom", url], tmp_path / "p1")
    found = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
    assert found, f"the load script did not run: {dom.stderr[-2000:]}"
    loaded, total = map(int, found.groups())
    assert total == len(list(synthetic_report["plots"].glob("*.png"))) and loaded == total

    shot = tmp_path / "report.png"
    chromium(["--window-size=1280,2400", f"--screenshot={shot}", url], tmp_path / "p2")
    pixels = image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1280)
    assert float(np.std(pixels)) > 0.05  # a blank page has no variation
    assert float(np.mean(pixels)) < 0.99  # not an all-white page

"""The report and comparison pages in a real browser (headless Chromium), at a desktop and
a narrow width: every image decodes, nothing overflows the page, the plots are there.

Chromium is the Debian package ``chromium`` (``scripts/setup.sh`` installs it); without it
this test is skipped with the reason.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fedge.experiment.config import load_config
from fedge.runs.run import run_experiment
from fedge.studies.compare import run_comparison

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WIDTHS = {"desktop": (1366, 900), "narrow": (500, 860)}  # 500: headless Chromium's least
PROBE = """
<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const result = {
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    captions: [...document.querySelectorAll('figcaption')].map(c => c.textContent),
    wideImages: imgs.filter(i => i.getBoundingClientRect().right > window.innerWidth + 1).length,
  };
  const out = document.createElement('pre');
  out.id = 'fedge-probe';
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
    ),
]


def probe(page: Path, width: str, tmp_path: Path) -> dict:
    """Load a copy of ``page`` with the probe script in Chromium at ``width``; its findings."""
    copy = tmp_path / f"probe-{width}-{page.name}"
    copy.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    w, h = WIDTHS[width]
    done = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--window-size={w},{h}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            copy.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r'<pre id="fedge-probe">(.*?)</pre>', done.stdout)
    assert found, f"chromium gave no result: {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def check_page(page: Path, tmp_path: Path, captions: list[str]) -> None:
    for width in WIDTHS:
        seen = probe(page, width, tmp_path)
        assert seen["broken"] == [], (width, seen)
        assert seen["images"] >= len(captions), (width, seen)
        assert seen["scrollWidth"] <= seen["innerWidth"], (width, seen)  # no sideways scroll
        assert seen["wideImages"] == 0, (width, seen)
        for caption in captions:
            assert caption in seen["captions"], (width, caption, seen["captions"])
        assert len(set(seen["captions"])) == len(seen["captions"])  # distinct titles


def test_the_run_report_renders_in_a_browser(tiny_config, tmp_path):
    result = run_experiment(load_config(tiny_config, ["rounds=3", "system.mobility='highway'"]))
    check_page(
        result.run_dir / "report.html",
        tmp_path,
        [
            "Test accuracy by round",
            "Test accuracy by simulated time",
            "Test accuracy by data sent",
            "Loss by round",
            "Data sent per tier",
            "Energy per tier",
            "Transmission latency per component",
            "Confusion matrix",
        ],
    )


def test_the_comparison_page_renders_in_a_browser(tiny_config, tmp_path):
    result = run_comparison(
        tiny_config, ["data.alpha=0.3,5"], seeds=2, overrides=["rounds=2"], progress=False
    )
    check_page(
        result.report,
        tmp_path,
        [
            "Test accuracy by round (mean and 95% band over seeds)",
            "Test accuracy by simulated time (mean and 95% band)",
            "Test accuracy by data sent (mean and 95% band)",
        ],
    )
    page = result.report.read_text()
    assert "The comparison" in page and "data.alpha=0.3,5" in page

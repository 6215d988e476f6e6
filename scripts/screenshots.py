"""Make the screenshots of a run report and a comparison page in docs/screenshots/.

A small FedAvg run on the bundled digits data (mobile devices on a highway, so handovers
show) and a comparison of FedAvg and HierFAVG over two seeds, rendered by headless Chromium
at a desktop width. Run it from the repository root: ``scripts/screenshots.sh``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fedge.experiment.config import load_config
from fedge.runs.run import run_experiment
from fedge.studies.compare import run_comparison

CONFIG = """
name = "digits-highway"
seed = 1
rounds = 12
algorithm = "fedavg"

[data]
dataset = "digits"
partition = "dirichlet"
alpha = 0.5
min_size = 5

[model]
name = "mlp"

[training]
lr = 0.1
batch_size = 16
epochs = 3

[federation]
clients_per_round = 8

[system]
edges = 3
devices = 24
mobility = "highway"

[output]
progress = false
"""
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)  # fmt: skip


def screenshot(page: Path, out: Path, size: str, profile: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("screenshots: chromium is not installed (apt-get install chromium)")
    subprocess.run(
        [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size}",
            "--virtual-time-budget=5000",
            f"--screenshot={out}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(f"screenshots: wrote {out}")


def main() -> None:
    docs = Path("docs/screenshots")
    docs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config_path = work / "digits.toml"
        store = (work / "runs" / "fedge.sqlite").as_posix()
        config_path.write_text(
            CONFIG + f'dir = "{(work / "runs").as_posix()}"\nstore = "{store}"\n'
        )
        run = run_experiment(load_config(config_path))
        comparison = run_comparison(
            config_path,
            ["algorithm=fedavg,hierarchical"],
            seeds=2,
            overrides=["rounds=8", "system.mobility='static'"],
            progress=False,
        )
        profile = work / "chromium-profile"
        screenshot(run.run_dir / "report.html", docs / "report.png", "1280,3400", profile)
        screenshot(comparison.report, docs / "comparison.png", "1280,2200", profile)
        screenshot(run.run_dir / "report.html", docs / "report-narrow.png", "500,1800", profile)


if __name__ == "__main__":
    main()

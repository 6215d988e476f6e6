"""Markdown tables of the MS-FL recipe from the run directories that run_recipe.sh wrote.

Usage: .venv/bin/python examples/msfl/tables.py runs/msfl-recipe
For every comparison it prints mean ± 95% CI over seeds of the final metrics, the
transmission latency and simulated time to the config's target accuracy (over the seeds that
reached it), and the handed-over / lost updates.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from fedge.experiment.compare import ci95
from fedge.results import read_rows_csv

COLUMNS = (
    ("accuracy", "accuracy", 4),
    ("precision", "precision", 4),
    ("recall", "recall", 4),
    ("f1", "F1", 4),
    ("wall_time_s", "run time s", 1),
    ("transmission_latency_s", "transm. latency s", 2),
    ("transmission_latency_to_target_s", "latency to target s", 2),
    ("sim_time_to_target_s", "sim time to target s", 1),
    ("handover_redirected", "handed over", 0),
    ("handover_lost", "lost", 0),
)


def _cell(values: list[float], digits: int) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    note = "" if len(vals) == len(values) else f" ({len(vals)}/{len(values)})"
    return f"{mean:.{digits}f} ± {ci95(vals):.{digits}f}{note}"


def _run_values(run_dir: Path) -> dict[str, float]:
    summary = json.loads((run_dir / "summary.json").read_text())
    last = read_rows_csv(run_dir / "metrics.csv")[-1]
    return {key: summary.get(key, last.get(key, 0.0)) for key, _, _ in COLUMNS}


def table(comparison: Path) -> str:
    entries = json.loads((comparison / "comparison.json").read_text())
    head = ["variant", "n", *(title for _, title, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in entries:
        runs = [_run_values(comparison / "runs" / rid) for rid in entry["runs"]]
        label = ", ".join(f"{k}={v}" for k, v in entry["variant"].items()) or "base"
        cells = [_cell([r[key] for r in runs], d) for key, _, d in COLUMNS]
        lines.append("| " + " | ".join([label, str(len(runs)), *cells]) + " |")
    return "\n".join(lines)


def main(root: str) -> None:
    for comparison in sorted(Path(root).glob("*/compare-*")):
        if not (comparison / "comparison.json").exists():
            continue  # still running
        print(f"### {comparison.parent.name}\n\n{table(comparison)}\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/msfl-recipe")

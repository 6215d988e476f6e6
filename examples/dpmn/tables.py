"""Markdown tables of the DPMN recipe from the directories that run_recipe.sh wrote.

Usage: .venv/bin/python examples/dpmn/tables.py runs/dpmn-recipe
Every cell is mean ± 95% CI over seeds. Traffic is every byte devices sent each other
(``bytes_peer_device_device``: models, updates and requests, as encoded on the wire); the
saving against DFL pairs each run with the DFL run of the same seed and device count.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from fedge.results.recipe import Column, Entry, comparisons, entries, markdown_table, mean_ci_cell

TRAFFIC = "bytes_peer_device_device"
COLUMNS = (
    Column("accuracy", "own-test acc. (mean)", 4),
    Column("accuracy_min", "min", 4),
    Column("accuracy_max", "max", 4),
    Column("global_accuracy", "global-test acc.", 4),
    Column("neighbours", "neighbours", 2),
    Column("traffic_mb", "traffic MB", 1),
    Column("wall_time_s", "run time s", 0),
)


def _with_traffic(rows: list[Entry]) -> list[Entry]:
    for entry in rows:
        for run in entry.runs:
            run["traffic_mb"] = float(run.get(TRAFFIC, 0.0)) / 1e6
    return rows


def _saving_against_dfl(rows: list[Entry]) -> Callable[[Entry], str]:
    def others(entry: Entry) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k, str(v)) for k, v in entry.variant.items() if k != "algorithm"))

    dfl = {others(e): e for e in rows if e.variant.get("algorithm") == "dfl"}

    def cell(entry: Entry) -> str:
        base = dfl.get(others(entry))
        if base is None or entry is base:
            return "–"
        pairs = zip(entry.runs, base.runs, strict=False)
        return mean_ci_cell([100 * (1 - r[TRAFFIC] / b[TRAFFIC]) for r, b in pairs], 1)

    return cell


def main(root: str) -> None:
    for comparison in comparisons(Path(root)):
        rows = _with_traffic(entries(comparison))
        extra = {}
        if any(e.variant.get("algorithm") == "dfl" for e in rows):
            extra["traffic saved vs DFL %"] = _saving_against_dfl(rows)
        print(f"### {comparison.parent.name}\n\n{markdown_table(rows, COLUMNS, extra)}\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/dpmn-recipe")

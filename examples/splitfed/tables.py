"""Markdown tables of the split / collaborative recipe from what run_recipe.sh wrote.

Usage: .venv/bin/python examples/splitfed/tables.py runs/splitfed-recipe
Every cell is mean ± 95% CI over seeds. Uploaded is ``bytes_up_edge_cloud`` (feature maps,
labels, probes and the edge parts sent up); mode switches and dormant batches are summed
over the rounds (and edges) of a run; the early-exit tables average ``early_exit.json``.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedge.results import read_json, read_rows_csv
from fedge.results.recipe import (
    Column,
    Entry,
    comparisons,
    entries,
    markdown,
    markdown_table,
    mean_ci_cell,
)

NAMES = {
    ("cut", "split.cut=0"): "(a) cloud-only, cut 0",
    ("cut", "split.cut=6"): "(b) collaborative SplitFed, cut 6",
    ("dormancy", "base"): "(c) collaborative + dormancy, cut 6",
    ("dormancy-all", "base"): "(c') dormancy, every edge may sleep",
    ("algorithms", "algorithm=split"): "vanilla split, cut 6",
    ("algorithms", "algorithm=ushaped"): "U-shaped SplitFed, cut 6",
}
COLUMNS = (
    Column("up_mb", "uploaded to cloud MB", 1),
    Column("down_mb", "cloud → edge MB", 1),
    Column("accuracy", "full-model acc.", 4),
    Column("edge_accuracy", "edge-head acc.", 4),
    Column("mode_switches_total", "mode switches", 1),
    Column("dormant_batches_total", "dormant batches", 1),
    Column("sim_time_s", "sim. time s", 1),
    Column("wall_time_s", "run time s", 0),
)
ROUNDS = (1, 2, 5, 10, 15, 20)


def _derived(run: dict[str, Any], run_dir: Path) -> None:
    """Figures the tables need beyond the summary: MB, totals over rounds, the rows."""
    rows = read_rows_csv(run_dir / "metrics.csv")
    run["up_mb"] = float(run.get("bytes_up_edge_cloud", 0.0)) / 1e6
    run["down_mb"] = float(run.get("bytes_down_edge_cloud", 0.0)) / 1e6
    for key in ("mode_switches", "dormant_batches"):
        run[f"{key}_total"] = sum(float(r.get(key) or 0.0) for r in rows)
    run["_rows"] = rows


def variants(root: Path) -> list[Entry]:
    """Every variant of the recipe's comparisons, named, in the order of ``NAMES``."""
    found: dict[str, Entry] = {}
    for comparison in comparisons(root):
        for entry in entries(comparison):
            for run, run_dir in zip(entry.runs, entry.dirs, strict=True):
                _derived(run, run_dir)
            name = NAMES.get((comparison.parent.name, entry.label), entry.label)
            found[name] = replace(entry, name=name)
    order = list(NAMES.values())
    return sorted(found.values(), key=lambda v: order.index(v.name) if v.name in order else 99)


def _at_round(runs: list[dict[str, Any]], r: int, key: str) -> list[float | None]:
    out: list[float | None] = []
    for run in runs:
        row = next((x for x in run["_rows"] if int(x["round"]) == r), None)
        value = row.get(key) if row is not None else None
        out.append(float(value) if value not in (None, "") else None)
    return out


def by_round(rows: list[Entry], key: str) -> str:
    last = max((int(x["round"]) for v in rows for run in v.runs for x in run["_rows"]), default=0)
    rounds = [r for r in ROUNDS if r <= last]
    lines = [[v.label, *(mean_ci_cell(_at_round(v.runs, r, key), 4) for r in rounds)] for v in rows]
    return markdown(["variant", *(f"round {r}" for r in rounds)], lines)


def early_exit_table(v: Entry) -> str:
    curves = [read_json(d / "early_exit.json") for d in v.dirs if (d / "early_exit.json").exists()]
    if not curves:
        return "(no early_exit.json)"
    head = ["entropy threshold (nats)", "exit fraction", "accuracy", "latency ms / sample"]
    lines = []
    for i, point in enumerate(curves[0]):
        cells = [
            mean_ci_cell([c[i][key] for c in curves], digits)
            for key, digits in (("exit_fraction", 3), ("accuracy", 4), ("latency_ms", 3))
        ]
        lines.append([f"{point['threshold']:g}", *cells])
    return markdown(head, lines)


def main(root: str) -> None:
    rows = variants(Path(root))
    print(f"### Data volume, accuracy and dormancy\n\n{markdown_table(rows, COLUMNS)}\n")
    print(f"### Full-model accuracy by round\n\n{by_round(rows, 'accuracy')}\n")
    print(f"### Edge-head accuracy by round\n\n{by_round(rows, 'edge_accuracy')}\n")
    for v in rows:
        if v.variant.get("split.cut") != 0:
            print(f"### Early exit: {v.label}\n\n{early_exit_table(v)}\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/splitfed-recipe")

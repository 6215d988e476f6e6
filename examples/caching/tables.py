"""Markdown tables (and PNG plots) of the caching recipe from the comparisons that
run_recipe.sh wrote.

Usage: .venv/bin/python examples/caching/tables.py runs/caching-recipe
For each comparison that varies the policy and the cache size it prints one table per metric
(policy x cache size, mean ± 95% CI over seeds) and writes ``<name>_hit_ratio_vs_size.png``;
for the θ sweep one table of soft hits and cost per policy and θ; for an FDRL run its
learning curve (fdrl_curve.csv, mean over seeds per episode).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedge.results.files import read_rows_csv
from fedge.results.plots import plot_lines
from fedge.results.recipe import Entry, comparisons, entries, markdown, mean_ci_cell

POLICY = "caching.policy"
SIZE = "caching.capacity_fraction"
THETA = "caching.theta"
METRICS = (
    ("direct_hit_ratio", "direct hit ratio", 4),
    ("soft_hit_ratio", "soft hit ratio", 4),
    ("avg_cost", "avg system cost", 3),
    ("avg_delay_s", "avg delay s", 3),
    ("backhaul_bytes", "backhaul GB", 2),
    ("wan_bytes", "WAN GB", 2),
    ("belady_gap", "gap to Belady (direct)", 4),
)


def _cell(entry: Entry, key: str, digits: int) -> str:
    scale = 1e-9 if key.endswith("_bytes") else 1.0
    return mean_ci_cell([r.get(key, np.nan) * scale for r in entry.runs], digits)


def pivot(rows: list[Entry], across: str) -> None:
    """One table per metric: a line per policy, a column per value of ``across``."""
    values = sorted({e.variant[across] for e in rows})
    policies = list(dict.fromkeys(e.variant[POLICY] for e in rows))
    at = {(e.variant[POLICY], e.variant[across]): e for e in rows}
    for key, title, digits in METRICS:
        lines = [
            [p, *(_cell(at[p, v], key, digits) if (p, v) in at else "–" for v in values)]
            for p in policies
        ]
        print(f"**{title}** ({len(rows[0].runs)} seeds)\n")
        print(markdown(["policy", *(f"{across.split('.')[-1]}={v}" for v in values)], lines) + "\n")


def size_plot(rows: list[Entry], out: Path) -> None:
    curves = []
    for policy in dict.fromkeys(e.variant[POLICY] for e in rows):
        mine = [e for e in rows if e.variant[POLICY] == policy]
        mine.sort(key=lambda e: e.variant[SIZE])
        x = np.array([100 * e.variant[SIZE] for e in mine])
        y = np.array([np.mean([r["direct_hit_ratio"] for r in e.runs]) for e in mine])
        curves.append((policy, x, y))
    plot_lines(out, curves, "cache size (% of catalogue)", "direct hit ratio", out.stem)


def theta_table(rows: list[Entry]) -> None:
    lines = [
        [
            str(e.variant[POLICY]),
            str(e.variant[THETA]),
            *(_cell(e, k, d) for k, _, d in METRICS[:3]),
        ]
        for e in rows
    ]
    print(markdown(["policy", "θ", *(t for _, t, _ in METRICS[:3])], lines) + "\n")


def fdrl_curve(rows: list[Entry]) -> None:
    for e in rows:
        per_episode: dict[int, list[float]] = defaultdict(list)
        for d in e.dirs:
            for row in read_rows_csv(d / "fdrl_curve.csv"):
                per_episode[int(row["episode"])].append(float(row["direct_hit_ratio"]))
        lines = [[str(k), mean_ci_cell(v, 4)] for k, v in sorted(per_episode.items())]
        print(f"FDRL learning curve, {e.label}\n")
        print(markdown(["episode", "training direct hit ratio"], lines) + "\n")


def main(root: str) -> None:
    for comparison in comparisons(Path(root)):
        rows = entries(comparison)
        name = comparison.parent.name
        print(f"### {name}\n")
        keys = set(rows[0].variant)
        if {POLICY, SIZE} <= keys:
            pivot(rows, SIZE)
            size_plot(rows, Path(root) / f"{name}_hit_ratio_vs_size.png")
        elif {POLICY, THETA} <= keys:
            theta_table(rows)
        if any((d / "fdrl_curve.csv").exists() for e in rows for d in e.dirs):
            fdrl_curve([e for e in rows if e.variant.get(POLICY) == "fdrl"])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/caching-recipe")

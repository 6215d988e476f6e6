"""Markdown tables from `fedge schedule --json` output: mean over seeds per setting.

.venv/bin/python examples/atsa/tables.py runs/atsa-recipe/batch.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

ORDER = ("atsa", "atsa_paper", "aco", "fcfs", "pso", "minmin", "maxmin", "sufferage", "lpt", "milp")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def table(rows: list[dict]) -> str:
    groups: dict[tuple[str, int, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["etc"], row["nodes"], row["algorithm"])].append(row)
    out = [
        "| ETC | nodes | algorithm | makespan s | total time s | imbalance | runtime ms "
        "| gap % (mean) | gap % (max) | proven optimal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rank = {name: i for i, name in enumerate(ORDER)}
    for etc, nodes, name in sorted(groups, key=lambda k: (k[0], k[1], rank.get(k[2], 99))):
        runs = groups[(etc, nodes, name)]
        proven = [r["proven_optimal"] for r in runs if r["proven_optimal"] is not None]
        cells = [
            etc,
            str(nodes),
            name,
            f"{_mean([r['makespan'] for r in runs]):.2f}",
            f"{_mean([r['total_time'] for r in runs]):.0f}",
            f"{_mean([r['load_imbalance'] for r in runs]):.3f}",
            f"{1000 * _mean([r['runtime_s'] for r in runs]):.0f}",
            f"{100 * _mean([r['gap'] for r in runs]):.2f}",
            f"{100 * max(r['gap'] for r in runs):.2f}",
            f"{sum(proven)}/{len(proven)}" if proven else "–",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    lines = Path(sys.argv[1]).read_text().splitlines()
    print(table([json.loads(line) for line in lines if line.strip()]))

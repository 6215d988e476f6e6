"""Markdown tables of the MS-FL recipe from the run directories that run_recipe.sh wrote.

Usage: .venv/bin/python examples/msfl/tables.py runs/msfl-recipe
For every comparison it prints mean ± 95% CI over seeds of the final metrics, the
transmission latency and simulated time to the config's target accuracy (over the seeds that
reached it), and the handed-over / lost updates.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedge.results.recipe import Column, comparisons, entries, markdown_table

COLUMNS = (
    Column("accuracy", "accuracy", 4),
    Column("precision", "precision", 4),
    Column("recall", "recall", 4),
    Column("f1", "F1", 4),
    Column("wall_time_s", "run time s", 1),
    Column("transmission_latency_s", "transm. latency s", 2),
    Column("transmission_latency_to_target_s", "latency to target s", 2),
    Column("sim_time_to_target_s", "sim time to target s", 1),
    Column("handover_redirected", "handed over", 0, default=0.0),
    Column("handover_lost", "lost", 0, default=0.0),
)


def main(root: str) -> None:
    for comparison in comparisons(Path(root)):
        print(f"### {comparison.parent.name}\n\n{markdown_table(entries(comparison), COLUMNS)}\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/msfl-recipe")

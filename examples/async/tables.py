"""The asynchronous-FL recipe's tables from the directories run_recipe.sh wrote.

Usage: .venv/bin/python examples/async/tables.py runs/async-recipe
One table per setting (cloud-only, hierarchical), one row per algorithm: mean ± 95% CI over
the seeds of the final accuracy, the rounds and simulated seconds to the target accuracy
(over the seeds that reached it), the simulated time of the whole run, and the speed-up
over the synchronous baseline (per seed: the baseline's time to target over the
algorithm's, for seeds where both reached it) with the share of simulated time saved.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedge.results.recipe import Column, Entry, comparisons, entries, markdown_table, mean_ci_cell

COLUMNS = (
    Column("accuracy", "final accuracy", 4),
    Column("rounds_to_target", "rounds to target", 1),
    Column("sim_time_to_target_s", "sim time to target (s)", 0),
    Column("sim_time_s", "sim time of the run (s)", 0),
)
BASELINES = ("fedavg", "hierarchical")


def _ratios(entry: Entry, baseline: Entry) -> list[float | None]:
    """Per seed: the baseline's simulated time to target over this entry's."""
    out: list[float | None] = []
    for ours, theirs in zip(entry.runs, baseline.runs, strict=False):
        a, b = ours.get("sim_time_to_target_s"), theirs.get("sim_time_to_target_s")
        out.append(float(b) / float(a) if a and b else None)
    return out


def table(comparison: Path) -> str:
    rows = entries(comparison)
    baseline = next(e for e in rows if e.variant.get("algorithm") in BASELINES)

    def speedup(entry: Entry) -> str:
        return mean_ci_cell(_ratios(entry, baseline), 2)

    def saved(entry: Entry) -> str:
        ratios = [None if r is None else 100 * (1 - 1 / r) for r in _ratios(entry, baseline)]
        return mean_ci_cell(ratios, 0)

    named = [Entry(e.variant, e.runs, e.dirs, str(e.variant["algorithm"])) for e in rows]
    extra = {"speed-up to target": speedup, "sim time saved (%)": saved}
    return markdown_table(named, COLUMNS, extra)


def main(root: str) -> None:
    for comparison in comparisons(Path(root)):
        print(f"\n{comparison.parent.name} ({comparison.name})\n")
        print(table(comparison))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/async-recipe")

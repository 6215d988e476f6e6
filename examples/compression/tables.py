"""The compression recipe's table from the directories that run_recipe.sh wrote.

Usage: .venv/bin/python examples/compression/tables.py runs/compression-recipe
One row per config: mean ± 95% CI over seeds of the final accuracy, the rounds and
simulated time to 75% accuracy (over the seeds that reached it), the uplink bytes per tier
as sent and as they would have been dense, and the uplink compression ratio.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedge.results.recipe import Column, Entry, comparisons, entries, markdown_table

ORDER = (
    "none", "fp16", "topk", "topk_noef", "qsgd8", "qsgd2", "stc", "hierarchical_none",
    "hierarchical",
)  # fmt: skip
COLUMNS = (
    Column("accuracy", "final accuracy", 4),
    Column("rounds_to_target", "rounds to 75%", 1),
    Column("sim_time_to_target_s", "sim time to 75% (s)", 1),
    Column("bytes_up_device_edge", "up device-edge (MB)", 1),
    Column("bytes_dense_up_device_edge", "dense device-edge (MB)", 1),
    Column("bytes_up_edge_cloud", "up edge-cloud (MB)", 1),
    Column("bytes_dense_up_edge_cloud", "dense edge-cloud (MB)", 1),
    Column("compression_ratio_up", "uplink ratio", 1),
)


def _mb(key: str, value: object) -> object:
    """Byte counters in MB (1e6 bytes); everything else as it is."""
    return value / 1e6 if key.startswith("bytes_") and isinstance(value, int | float) else value


def _entries(root: Path) -> list[Entry]:
    found = {c.parent.name: c for c in comparisons(root)}
    out = []
    for name in ORDER:
        if name in found:
            entry = entries(found[name])[0]
            runs = [{k: _mb(k, v) for k, v in run.items()} for run in entry.runs]
            out.append(Entry(entry.variant, runs, entry.dirs, name))
    return out


def main(root: str) -> None:
    print(markdown_table(_entries(Path(root)), COLUMNS))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/compression-recipe")

"""The DPMN similarity study: what DPMN's cosine similarities look like, and the δ sweep
for each reading of "similarity" (``decentralized.similarity``).

Usage: .venv/bin/python examples/dpmn/similarity.py runs/dpmn-similarity
Reads every finished ``fedge compare`` directory under the root (``similarity.sh`` writes
them). Per variant (mean ± 95% CI over seeds): own-test accuracy after the last round;
|S_i| in the last round and its mean over all rounds; device-to-device traffic; and the
distribution of the cosine similarities DPMN thresholded (every device-peer pair of a
reselection round: p10 / median / p90 / max) in round 1 and in the last reselection round.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fedge.results.files import read_rows_csv
from fedge.results.recipe import comparisons, entries, markdown, mean_ci_cell

TRAFFIC = "bytes_peer_device_device"
QUANTILES = ("similarity_p10", "similarity_p50", "similarity_p90", "similarity_max")


def _run_cells(run_dir: Path) -> dict[str, float]:
    rows = read_rows_csv(run_dir / "metrics.csv")
    out = {"neighbours_mean": float(np.mean([float(r["neighbours"]) for r in rows]))}
    chosen = [r for r in rows if r.get("similarity_mean") not in (None, "")]
    for tag, row in (("first", chosen[0]), ("last", chosen[-1])) if chosen else ():
        for q in QUANTILES:
            out[f"{tag}_{q}"] = float(row[q])
    return out


def main(root: str) -> None:
    head = [
        "variant",
        "n",
        "own-test acc.",
        "neighbours (last round)",
        "neighbours (mean over rounds)",
        "traffic MB",
        "round-1 sims p10 / p50 / p90 / max",
        "last reselection p10 / p50 / p90 / max",
    ]
    for comparison in comparisons(Path(root)):
        lines = []
        for entry in entries(comparison):
            cells = [_run_cells(d) for d in entry.dirs]

            def cell(key: str, digits: int, cells: list[dict[str, float]] = cells) -> str:
                return mean_ci_cell([c.get(key) for c in cells], digits)

            def dist(tag: str, cells: list[dict[str, float]] = cells) -> str:
                return " / ".join(
                    f"{np.mean([c[f'{tag}_{q}'] for c in cells if f'{tag}_{q}' in c]):.2f}"
                    for q in QUANTILES
                )

            lines.append([
                entry.label,
                str(len(entry.runs)),
                mean_ci_cell([r.get("accuracy") for r in entry.runs], 4),
                mean_ci_cell([r.get("neighbours") for r in entry.runs], 2),
                cell("neighbours_mean", 2),
                mean_ci_cell([float(r.get(TRAFFIC, 0.0)) / 1e6 for r in entry.runs], 1),
                dist("first"),
                dist("last"),
            ])  # fmt: skip
        print(f"### {comparison.parent.name}\n\n{markdown(head, lines)}\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/dpmn-similarity")

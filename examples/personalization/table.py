"""The personalization recipe's table from the directories run_recipe.sh wrote.

Usage: .venv/bin/python examples/personalization/table.py runs/personalization-recipe
Every cell is mean ± 95% CI over seeds, after the last round: own-split accuracy (the mean
over devices of each device's model on its own test split) and its spread across devices
(std, min, p10, p90, max); the global model on the shared test set where the method has one
(FedAvg, Ditto: ``global_model_accuracy``; DPMN: the mean of its personal models there,
``global_accuracy``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedge.results.recipe import Column, Entry, comparisons, entries, markdown_table

COLUMNS = (
    Column("accuracy", "own-split acc. (mean)", 4),
    Column("accuracy_std", "std", 4),
    Column("accuracy_min", "min", 4),
    Column("accuracy_p10", "p10", 4),
    Column("accuracy_p90", "p90", 4),
    Column("accuracy_max", "max", 4),
    Column("global_model_accuracy", "global model, shared test", 4),
    Column("global_accuracy", "personal models, shared test", 4),
    Column("bytes_up", "bytes up MB", 1),
    Column("wall_time_s", "run time s", 0),
)
NAMES = {
    "personalization.finetune_epochs=0": "FedAvg (global model on own splits)",
    "personalization.finetune_epochs=1": "FedAvg + 1 epoch fine-tuning",
    "algorithm=fedper": "FedPer",
    "algorithm=ditto": "Ditto",
    "algorithm=dpmn": "DPMN",
}


def main(root: str) -> None:
    rows: list[Entry] = []
    for comparison in comparisons(Path(root)):
        for entry in entries(comparison):
            for run in entry.runs:
                run["bytes_up"] = float(run.get("bytes_up", 0.0)) / 1e6
            name = NAMES.get(entry.label, entry.label)
            rows.append(Entry(entry.variant, entry.runs, entry.dirs, name))
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/personalization-recipe")

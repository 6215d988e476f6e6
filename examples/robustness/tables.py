"""The robustness recipe's table from the comparisons that run_recipe.sh wrote.

Usage: .venv/bin/python examples/robustness/tables.py runs/robustness-recipe
One row per (attack, defence, share of malicious devices): mean ± 95% CI over the seeds of
the final clean accuracy, the backdoor's attack success rate (backdoor rows), and the
detection precision / recall (detection rows).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fedge.studies.compare import Stat, summarise

ATTACKS = ("sign_flip", "gaussian", "scaled", "label_flip", "backdoor", "free_rider")
DEFENCES = ("mean", "median", "trimmed_mean", "multikrum", "norm_bound", "detection")
FIGURES = (
    ("accuracy", "clean accuracy"),
    ("attack_success_rate", "backdoor success"),
    ("detection_precision", "detection precision"),
    ("detection_recall", "detection recall"),
)


def _cell(stats: dict[str, Stat], key: str) -> str:
    stat = stats.get(key)
    if stat is None:
        return "–"
    return f"{stat.mean:.3f} ± {stat.ci95:.3f}"


def _stats(compare_dir: Path, entry: dict[str, Any]) -> dict[str, Stat]:
    """Mean and 95% CI over the variant's runs, from each run's summary.json."""
    summaries = [
        json.loads((compare_dir / "runs" / run / "summary.json").read_text())
        for run in entry["runs"]
    ]
    return summarise(summaries, [key for key, _ in FIGURES])


def rows(root: Path) -> list[list[str]]:
    out = []
    for path in sorted(root.glob("*/comparison.json")):
        slug = path.parent.name.split("-", 3)[3]  # compare-<date>-<time>-<attack>-<defence>
        attack, defence = slug.split("-")[:2]
        for entry in json.loads(path.read_text()):
            share = entry["variant"].get("attack.0.share", "")
            stats = _stats(path.parent, entry)
            figures = [_cell(stats, key) for key, _ in FIGURES]
            out.append([attack, defence, f"{share}", str(entry["n"]), *figures])
    return sorted(out, key=_order)


def _order(row: list[str]) -> tuple[int, int, str]:
    attack, defence, share = row[:3]
    a = ATTACKS.index(attack) if attack in ATTACKS else len(ATTACKS)
    d = DEFENCES.index(defence) if defence in DEFENCES else len(DEFENCES)
    return a, d, share


def main(root: str) -> None:
    header = ["attack", "defence", "malicious share", "n", *(title for _, title in FIGURES)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows(Path(root)):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/robustness-recipe")

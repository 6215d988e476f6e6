"""Markdown tables of ``fedge compare`` directories, for recipe READMEs.

Each cell is ``mean ± ci95`` over a variant's seeds of a run's summary value (else its last
round's value); cells note how many seeds had the value when some lacked it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.results.files import read_rows_csv


@dataclass(frozen=True)
class Column:
    """A table column: the metric key, its title and the digits shown."""

    key: str
    title: str
    digits: int
    default: float | None = None
    """The value of a run that lacks the key (None: the run has no value)."""


@dataclass(frozen=True)
class Entry:
    """One variant of a comparison and the values of its runs (one dict per seed)."""

    variant: Mapping[str, Any]
    runs: list[dict[str, Any]]
    dirs: tuple[Path, ...] = ()
    """The run directories, in the order of ``runs``."""
    name: str = ""
    """A label for tables; default: the variant's ``key=value`` pairs."""

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return ", ".join(f"{k}={v}" for k, v in self.variant.items()) or "base"


def ci95(values: Sequence[float]) -> float:
    """Half-width of the Student-t 95% interval of the mean; 0 for one value, NaN for none."""
    n = len(values)
    if n < 2:
        return 0.0 if n == 1 else math.nan
    from scipy.stats import t

    sd = float(np.std(np.asarray(values, dtype=float), ddof=1))
    return float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def mean_ci_cell(values: Sequence[float | None], digits: int) -> str:
    """``mean ± ci95`` of the finite values, with ``(k/n)`` when only k of n had one."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return "–"
    note = "" if len(vals) == len(values) else f" ({len(vals)}/{len(values)})"
    return f"{sum(vals) / len(vals):.{digits}f} ± {ci95(vals):.{digits}f}{note}"


def run_values(run_dir: Path) -> dict[str, Any]:
    """A run's last round row overlaid with its summary."""
    rows = read_rows_csv(run_dir / "metrics.csv")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {**(rows[-1] if rows else {}), **summary}


def entries(comparison: Path) -> list[Entry]:
    """The variants of a finished comparison directory, in their order."""
    out = []
    for e in json.loads((comparison / "comparison.json").read_text()):
        dirs = tuple(comparison / "runs" / rid for rid in e["runs"])
        out.append(Entry(e["variant"], [run_values(d) for d in dirs], dirs))
    return out


def markdown(head: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """A markdown table: the header row, the rule, one row per line of cells."""
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(rows + ["| " + " | ".join(cells) + " |" for cells in lines])


def markdown_table(
    rows: Sequence[Entry],
    columns: Sequence[Column],
    extra: Mapping[str, Callable[[Entry], str]] | None = None,
) -> str:
    """One line per variant: label, seeds, a ``mean ± ci95`` cell per column, then extras."""
    extra = extra or {}
    head = ["variant", "n", *(c.title for c in columns), *extra]
    lines = []
    for entry in rows:
        cells = [
            mean_ci_cell([r.get(c.key, c.default) for r in entry.runs], c.digits) for c in columns
        ]
        cells += [fn(entry) for fn in extra.values()]
        lines.append([entry.label, str(len(entry.runs)), *cells])
    return markdown(head, lines)


def comparisons(root: Path) -> Iterator[Path]:
    """Finished comparison directories under ``root/<name>/compare-*``, sorted."""
    for comparison in sorted(root.glob("*/compare-*")):
        if (comparison / "comparison.json").exists():
            yield comparison

"""Human-readable numbers and plain-text tables for the terminal and the HTML report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

RATIO_KEYS = frozenset({"accuracy", "precision", "recall", "f1", "loss"})
MISSING = "-"
_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def human_bytes(n: float) -> str:
    """Decimal units, as the plots use: ``512 B``, ``1.50 MB``, ``2.00 GB``."""
    value = float(n)
    if not math.isfinite(value):
        return MISSING
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value < 1000:
        return f"{sign}{value:.0f} B"
    unit = 0
    while value >= 1000 and unit < len(_UNITS) - 1:
        value /= 1000
        unit += 1
    return f"{sign}{value:.2f} {_UNITS[unit]}"


def is_bytes_key(key: str) -> bool:
    return key.startswith("bytes") or key.endswith("_bytes") or key == "nbytes"


def format_value(key: str, value: Any) -> str:
    """A metric as text: ratios with 4 decimals, bytes as KB/MB/GB, seconds with 2 decimals."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return MISSING if math.isnan(value) else str(value)
    if is_bytes_key(key):
        return human_bytes(value)
    return _format_number(key, value)


def _format_number(key: str, value: float) -> str:
    if key in RATIO_KEYS:
        return f"{value:.4f}"
    if key.endswith("_s") or key.endswith("_j"):
        return f"{value:.2f}"
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.4g}"
    return f"{value:.4f}"


def _is_numeric(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table: header, a dashed rule, one line per row; numbers right-aligned,
    text left-aligned, a missing value shown as ``-``."""
    cells = [[format_value(col, row.get(col)) for col in columns] for row in rows]
    numeric = [any(_is_numeric(row.get(col)) for row in rows) for col in columns]
    widths = [max([len(col), *(len(line[i]) for line in cells)]) for i, col in enumerate(columns)]

    def line(texts: Sequence[str]) -> str:
        parts = [
            t.rjust(w) if num else t.ljust(w)
            for t, w, num in zip(texts, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out.extend(line(texts) for texts in cells)
    return "\n".join(out)

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


LABELS = {
    "accuracy": "Test accuracy",
    "precision": "Precision (macro)",
    "recall": "Recall (macro)",
    "f1": "F1 (macro)",
    "loss": "Test loss",
    "train_loss": "Training loss",
    "rounds": "Rounds",
    "steps": "Steps",
    "round": "Round",
    "sim_time_s": "Simulated time (s)",
    "wall_time_s": "Wall-clock time (s)",
    "bytes_up": "Data sent up, all tiers",
    "bytes_down": "Data sent down, all tiers",
    "bytes_peer": "Data between peers",
    "bytes_dense_up": "Uplink data if uncompressed",
    "energy_j": "Energy, all tiers (J)",
    "transmission_latency_s": "Transmission latency (s)",
    "compression_ratio_up": "Uplink compression (×)",
    "target_accuracy": "Target accuracy",
    "rounds_to_target": "Rounds to target",
    "sim_time_to_target_s": "Simulated time to target (s)",
    "transmission_latency_to_target_s": "Transmission latency to target (s)",
    "accuracy_min": "Lowest device accuracy",
    "accuracy_max": "Highest device accuracy",
    "handovers": "Handovers",
    "participants": "Participants",
    "selected": "Selected devices",
    "n": "Test samples",
    "flops": "FLOPs",
    "messages": "Messages",
    "late": "Stragglers (cumulative)",
    "dropped": "Dropouts (cumulative)",
}
_DIRECTIONS = {"up": "up", "down": "down", "peer": "between peers", "dense": "if uncompressed"}


def label(key: str) -> str:
    """A metric key as a person reads it, with its unit: ``bytes_up_device_edge`` ->
    ``Data up, device–edge``, ``latency_upload_s`` -> ``Latency: upload (s)``."""
    if key in LABELS:
        return LABELS[key]
    if "." in key:  # a config key (a comparison's varied one): the user's own words
        return key
    if key.startswith("round_"):
        base = label(key.removeprefix("round_")).replace(" (cumulative)", "")
        head, sep, unit = base.rpartition(" (")
        return f"{head}, this round ({unit}" if sep else f"{base}, this round"
    if key.startswith("bytes_"):
        parts = key.removeprefix("bytes_").split("_")
        words = sorted((p for p in parts if p in _DIRECTIONS), key=lambda p: p == "dense")
        tiers = [p for p in parts if p not in _DIRECTIONS]
        return f"Data {' '.join(_DIRECTIONS[w] for w in words)}, {'–'.join(tiers)}"
    if key.startswith("global_"):
        return label(key.removeprefix("global_")) + " (shared test set)"
    return _family_label(key)


def _family_label(key: str) -> str:
    """Energy, airtime and latency per tier or component; else the words with a unit."""
    if key.startswith("energy_j_"):
        return f"Energy, {key.removeprefix('energy_j_')}s (J)"
    if key.startswith("airtime_s_"):
        return f"Airtime, {key.removeprefix('airtime_s_').replace('_', '–')} (s)"
    if key.startswith("latency_") and key.endswith("_s"):
        return f"Latency: {key.removeprefix('latency_').removesuffix('_s').replace('_', ' ')} (s)"
    text = key.replace("_", " ")
    for suffix, unit in ((" s", " (s)"), (" j", " (J)"), (" ms", " (ms)"), (" mb", " (MB)")):
        if text.endswith(suffix):
            text = text[: -len(suffix)] + unit
    return text[:1].upper() + text[1:]

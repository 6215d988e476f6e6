"""PNG plots of a run (accuracy, bytes per tier, energy, confusion) and of a comparison.

matplotlib is the optional extra ``plots``. Without it every function here returns no paths
and logs one warning line with the install hint. Figures are drawn on the Agg canvas directly
(no pyplot), so plotting never changes the user's interactive backend and needs no display.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedge.core.files import atomic_write_bytes
from fedge.results.files import row_columns

log = logging.getLogger(__name__)

INSTALL_HINT = "plots skipped: matplotlib is not installed; pip install 'fedge[plots]'"
_DPI = 110
_warned = False

Curve = tuple[str, np.ndarray, np.ndarray]


def plotting_available() -> bool:
    """True when matplotlib can be imported; logs the install hint once otherwise."""
    global _warned
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if not _warned:
            log.warning(INSTALL_HINT)
            _warned = True
        return False
    return True


def _new_figure(width: float = 6.4, height: float = 4.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def xy_series(
    rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) over the rows where both keys hold finite numbers (e.g. evaluated rounds)."""
    xs: list[float] = []
    ys: list[float] = []
    for row in rows:
        x, y = _number(row.get(x_key)), _number(row.get(y_key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "x", "P", "*")


def _line_plot(
    path: Path,
    curves: Sequence[Curve],
    xlabel: str,
    ylabel: str,
    title: str,
    legend: bool = False,
) -> Path:
    """Curves that coincide stay visible: each has its own dash, marker and a width that
    shrinks from the first to the last, so a later line is drawn inside an earlier one."""
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, x, y) in enumerate(curves):
        ax.plot(
            x,
            y,
            linestyle=STYLES[i % len(STYLES)],
            linewidth=max(1.0, 2.6 - 0.5 * i) if len(curves) > 1 else 1.6,
            marker=MARKERS[i % len(MARKERS)] if len(x) <= 30 else None,
            markersize=max(3.0, 6.0 - i),
            fillstyle="none" if i else "full",
            label=label,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if xlabel == "round":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if legend or len(curves) > 1:
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_lines(
    path: Path, curves: Sequence[Curve], xlabel: str, ylabel: str, title: str
) -> list[Path]:
    """One PNG with a line per curve; no paths without matplotlib (hint logged once)."""
    if not plotting_available():
        return []
    return [_line_plot(path, curves, xlabel, ylabel, title)]


def _tier_label(key: str) -> str:
    """``bytes_up_device_edge`` -> ``device–edge up``; other names just lose the prefix."""
    parts = key.removeprefix("bytes_").split("_")
    if len(parts) == 3:
        return f"{parts[1]}–{parts[2]} {parts[0]}"
    return " ".join(parts)


def _byte_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per-tier counters ``bytes_<direction>_<tier>``; totals such as ``bytes_up`` are left out."""
    keys: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key.startswith("bytes_") and key.count("_") >= 2 and "_dense_" not in key:
                keys.setdefault(key, None)
    return list(keys)


_ACCURACY_AXES = (
    ("round", "round", "accuracy_vs_round.png", "Test accuracy by round"),
    (
        "sim_time_s",
        "simulated time (s)",
        "accuracy_vs_sim_time.png",
        "Test accuracy by simulated time",
    ),
)
"""(x key, x label, file name, title) of a run's accuracy plots; a comparison's files are
these names prefixed ``comparison_``, plus accuracy by data sent."""


def _plot_accuracy(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    written = []
    for x_key, xlabel, name, title in _ACCURACY_AXES:
        x, y = xy_series(rows, x_key, "accuracy")
        if len(x):
            curve = ("accuracy", x, y)
            written.append(_line_plot(out_dir / name, [curve], xlabel, "accuracy", title))
    return written


def _plot_accuracy_vs_bytes(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    sent = [
        {**row, "bytes_sent": row["bytes_up"] + row.get("bytes_down", 0)}
        for row in rows
        if _number(row.get("bytes_up")) is not None
    ]
    x, y = xy_series(sent, "bytes_sent", "accuracy")
    if not len(x):
        return []
    title = "Test accuracy by data sent (up + down, all tiers)"
    path = out_dir / "accuracy_vs_bytes.png"
    return [_line_plot(path, [("accuracy", x / 1e6, y)], "data sent (MB)", "accuracy", title)]


def _plot_loss(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    curves = [
        (label, *xy_series(rows, "round", key))
        for key, label in (("loss", "test loss"), ("train_loss", "training loss"))
    ]
    curves = [c for c in curves if len(c[1])]
    if not curves:
        return []
    return [_line_plot(out_dir / "loss.png", curves, "round", "loss", "Loss by round")]


def _plot_bytes(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    curves = []
    for key in _byte_keys(rows):
        x, y = xy_series(rows, "round", key)
        if len(x):
            curves.append((_tier_label(key), x, y / 1e6))
    if not curves:
        return []
    title = "Data sent per tier (cumulative)"
    path = out_dir / "bytes_per_tier.png"
    return [_line_plot(path, curves, "round", "MB", title, legend=True)]


def _plot_energy(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    keys = [("energy_j", "all tiers")]
    keys += [(k, k.removeprefix("energy_j_") + "s") for k in row_columns(rows)
             if k.startswith("energy_j_")]  # fmt: skip
    curves = [(label, *xy_series(rows, "round", key)) for key, label in dict(keys).items()]
    curves = [c for c in curves if len(c[1])]
    if not curves:
        return []
    title = "Energy per tier (cumulative)"
    return [_line_plot(out_dir / "energy.png", curves, "round", "energy (J)", title)]


LATENCY_COMPONENTS = {
    "round_latency_upload_s": "device upload",
    "round_latency_exchange_s": "edge–edge exchange",
    "round_latency_cloud_up_s": "edge → cloud",
    "round_latency_cloud_down_s": "cloud → edge",
    "round_latency_handover_s": "handover relay",
    "round_latency_d2d_s": "device–device",
}


def _nonzero_curves(rows: Sequence[Mapping[str, Any]], labels: Mapping[str, str]) -> list[Curve]:
    curves = [(label, *xy_series(rows, "round", key)) for key, label in labels.items()]
    return [c for c in curves if len(c[1]) and np.any(c[2] != 0)]


def _plot_latency(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    curves = _nonzero_curves(rows, LATENCY_COMPONENTS)
    if not curves:
        return []
    title = "Transmission latency per component (slowest transfer, per round)"
    path = out_dir / "latency_components.png"
    return [_line_plot(path, curves, "round", "latency (s)", title, legend=True)]


EVENTS = {
    "handovers": "handovers",
    "round_handover_redirected": "updates redirected",
    "round_handover_lost": "updates lost in handover",
    "round_dropped": "dropouts",
    "round_late": "stragglers (past the deadline)",
}


def _plot_events(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    curves = _nonzero_curves(rows, EVENTS)
    if not curves:
        return []
    title = "Handovers, dropouts and stragglers per round"
    return [_line_plot(out_dir / "events.png", curves, "round", "count", title, legend=True)]


def _plot_spread(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Accuracy over nodes (devices of personalized algorithms, edges of multi-server FL):
    the mean and its min-max band."""
    x, mean = xy_series(rows, "round", "accuracy")
    _, low = xy_series(rows, "round", "accuracy_min")
    _, high = xy_series(rows, "round", "accuracy_max")
    if not len(x) or len(low) != len(x) or len(high) != len(x):
        return []
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.fill_between(x, low, high, alpha=0.25, label="min – max over nodes")
    ax.plot(x, mean, marker="o" if len(x) <= 30 else None, markersize=3, label="mean")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy spread across devices or edges")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return [_save(fig, out_dir / "accuracy_spread.png")]


def plot_confusion(
    matrix: np.ndarray, out_path: Path, class_names: Sequence[str] | None = None
) -> Path:
    """A confusion matrix (rows: true class, columns: predicted), coloured by the share of
    each true class (row %), so classes of any size read alike; cells show the counts."""
    m = np.asarray(matrix, dtype=float)
    n = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    totals = m.sum(axis=1, keepdims=True)
    share = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0) * 100
    size = min(4.5 + 0.45 * n, 13.0)
    fig = _new_figure(size + 1.2, size)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("% of the true class")
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize="small")
    ax.set_yticks(range(n), names, fontsize="small")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (counts; colour: % of the true class)")
    if n <= 20:
        for (i, j), count in np.ndenumerate(m):
            color = "white" if share[i, j] > 50 else "black"
            text = f"{count:.0f}" if float(count).is_integer() else f"{count:.2f}"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize="x-small")
    return _save(fig, out_path)


def plot_run(
    rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
    confusion: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write a run's plots into ``out_dir`` and return their paths; a plot whose data is
    missing is skipped. ``bytes_*`` and ``energy_j`` are read as cumulative per row."""
    if not plotting_available():
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rows and "step" in rows[0] and "round" not in rows[0]:  # a study's rows
        return plot_steps(rows, out)
    written = []
    for plot in (
        _plot_accuracy,
        _plot_accuracy_vs_bytes,
        _plot_loss,
        _plot_bytes,
        _plot_energy,
        _plot_latency,
        _plot_events,
        _plot_spread,
    ):
        written += plot(rows, out)
    if confusion is not None and np.asarray(confusion).size:
        written.append(plot_confusion(confusion, out / "confusion.png", class_names))
    return written


def plot_comparison(series: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: Path) -> list[Path]:
    """Overlay several runs' accuracy curves (vs round, simulated time and data sent when
    known); a curve whose rows carry ``accuracy_ci95`` gets its 95% band around it."""
    if not plotting_available():
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    axes = [
        *((x, label, f"comparison_{name}", title) for x, label, name, title in _ACCURACY_AXES),
        (
            "bytes_sent",
            "data sent (MB)",
            "comparison_accuracy_vs_bytes.png",
            "Test accuracy by data sent",
        ),
    ]
    for x_key, xlabel, name, title in axes:
        curves = []
        for label, rows in series.items():
            points = [_with_sent(row) for row in rows]
            x, y = xy_series(points, x_key, "accuracy")
            if len(x):
                _, band = xy_series(points, x_key, "accuracy_ci95")
                scale = 1e6 if x_key == "bytes_sent" else 1.0
                curves.append((label, x / scale, y, band if len(band) == len(x) else None))
        if curves:
            written.append(_band_plot(out / name, curves, xlabel, title))
    return written


def _with_sent(row: Mapping[str, Any]) -> dict[str, Any]:
    up, down = _number(row.get("bytes_up")), _number(row.get("bytes_down"))
    return {**row, "bytes_sent": up + (down or 0.0)} if up is not None else dict(row)


def _band_plot(
    path: Path, curves: Sequence[tuple[str, np.ndarray, np.ndarray, Any]], xlabel: str, title: str
) -> Path:
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    banded = False
    for i, (label, x, y, band) in enumerate(curves):
        (line,) = ax.plot(
            x,
            y,
            linestyle=STYLES[i % len(STYLES)],
            marker=MARKERS[i % len(MARKERS)] if len(x) <= 30 else None,
            markersize=4,
            label=label,
        )
        if band is not None and np.isfinite(band).any():
            low, high = np.clip(y - band, 0.0, 1.0), np.clip(y + band, 0.0, 1.0)
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.18)
            banded = True
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title + (" (band: 95% CI over seeds, within [0, 1])" if banded else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_steps(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """One PNG per numeric column against step (``<key>_vs_step.png``); none without
    matplotlib."""
    if not plotting_available():
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for key in row_columns(rows):
        x, y = xy_series(rows, "step", key)
        if key == "step" or not len(x):
            continue
        path = out_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + "_vs_step.png")
        written += plot_lines(path, [(key, x, y)], "step", key, key.replace("_", " "))
    return written

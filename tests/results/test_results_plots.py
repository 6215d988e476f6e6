"""PNG plots: the expected files, skipped plots without data, no matplotlib."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from fedge.results import plot_comparison, plot_run
from fedge.results import plots as plots_module

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_rows(n: int = 5) -> list[dict[str, float | int | str]]:
    rows: list[dict[str, float | int | str]] = []
    for r in range(1, n + 1):
        row: dict[str, float | int | str] = {
            "round": r,
            "loss": 1.0 / r,
            "sim_time_s": 2.5 * r,
            "energy_j": 10.0 * r,
            "bytes_up_device_edge": 2_000_000 * r,
            "bytes_down_edge_cloud": 500_000 * r,
        }
        if r % 2 == 1:  # accuracy only in evaluated rounds
            row["accuracy"] = 0.5 + 0.05 * r
        else:
            row["accuracy"] = float("nan")
        rows.append(row)
    return rows


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 100
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_run_writes_every_plot_with_data(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    confusion = np.array([[5, 1], [2, 7]])
    paths = plot_run(make_rows(), tmp_path / "plots", confusion, class_names=["cat", "dog"])
    names = [p.name for p in paths]
    assert names == [
        "accuracy_vs_round.png",
        "accuracy_vs_sim_time.png",
        "loss.png",
        "bytes_per_tier.png",
        "energy.png",
        "confusion.png",
    ]
    for path in paths:
        assert_png(path)


def test_plot_run_skips_plots_without_data(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = [{"round": 1}, {"round": 2, "accuracy": float("nan")}]
    assert plot_run(rows, tmp_path) == []
    rows[1]["accuracy"] = 0.4
    assert [p.name for p in plot_run(rows, tmp_path)] == ["accuracy_vs_round.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy_vs_round.png"]
    rows[0]["loss"] = 2.0
    assert [p.name for p in plot_run(rows, tmp_path)] == ["accuracy_vs_round.png", "loss.png"]


def test_plot_comparison_overlays_runs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    other = [{"round": r, "accuracy": 0.3 + 0.1 * r} for r in range(1, 4)]
    paths = plot_comparison({"fedavg": make_rows(), "hier": other}, tmp_path)
    assert [p.name for p in paths] == [
        "comparison_accuracy_vs_round.png",
        "comparison_accuracy_vs_sim_time.png",
    ]
    for path in paths:
        assert_png(path)


def test_without_matplotlib_plots_are_skipped_with_one_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    monkeypatch.setattr(plots_module, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="fedge.results.plots"):
        assert plot_run(make_rows(), tmp_path) == []
        assert plot_comparison({"a": make_rows()}, tmp_path) == []
    hints = [r.getMessage() for r in caplog.records]
    assert len(hints) == 1 and "pip install 'fedge[plots]'" in hints[0]
    assert list(tmp_path.iterdir()) == []

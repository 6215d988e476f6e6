"""One plot per question, each present only when its data is, and coinciding curves stay
distinguishable."""

from pathlib import Path

import pytest

from fedge.results import plot_run
from fedge.results import plots as plots_module
from fedge.results.formatting import label

pytest.importorskip("matplotlib")


def rows(n=4, **extra):
    out = []
    for r in range(1, n + 1):
        row = {
            "round": r,
            "accuracy": 0.5 + 0.1 * r,
            "loss": 1.0 / r,
            "sim_time_s": 2.0 * r,
            "bytes_up": 3e6 * r,
            "bytes_down": 1e6 * r,
            "bytes_up_device_edge": 1e6 * r,
            "bytes_up_edge_cloud": 1e6 * r,  # coincides with device-edge up
            "bytes_down_device_edge": 5e5 * r,
            "bytes_down_edge_cloud": 5e5 * r,  # coincides with device-edge down
            "energy_j": 3.0 * r,
            "energy_j_device": 1.0 * r,
            "energy_j_edge": 2.0 * r,
            "round_latency_upload_s": 0.2,
            "round_latency_cloud_up_s": 0.1,
            "round_latency_exchange_s": 0.0,
            "handovers": 0.0,
            "round_dropped": 0.0,
        }
        row.update({k: v(r) if callable(v) else v for k, v in extra.items()})
        out.append(row)
    return out


def names(paths):
    return [Path(p).name for p in paths]


def test_each_question_gets_its_plot_only_when_its_data_is_there(tmp_path):
    plain = names(plot_run(rows(), tmp_path / "a"))
    assert plain == [
        "accuracy_vs_round.png",
        "accuracy_vs_sim_time.png",
        "accuracy_vs_bytes.png",
        "loss.png",
        "bytes_per_tier.png",
        "energy.png",
        "latency_components.png",
    ]  # no events (all zero), no spread (no min / max)
    more = rows(handovers=lambda r: float(r % 2), accuracy_min=0.1, accuracy_max=0.9)
    assert {"events.png", "accuracy_spread.png"} <= set(names(plot_run(more, tmp_path / "b")))


def test_coinciding_tiers_are_all_drawn_and_told_apart(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots_module, "_save", lambda fig, path: figures.append(fig) or path)
    plots_module._plot_bytes(rows(), tmp_path)
    (fig,) = figures
    lines = fig.axes[0].get_lines()
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(lines) == 4 and len(legend) == 4
    assert len({(ln.get_linestyle(), ln.get_marker()) for ln in lines}) == 4
    widths = [ln.get_linewidth() for ln in lines]
    assert widths == sorted(widths, reverse=True)  # later lines drawn inside earlier ones


def test_latency_plot_shows_only_components_that_occur(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots_module, "_save", lambda fig, path: figures.append(fig) or path)
    plots_module._plot_latency(rows(), tmp_path)
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert legend == ["device upload", "edge → cloud"]


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("accuracy", "Test accuracy"),
        ("sim_time_s", "Simulated time (s)"),
        ("bytes_up_device_edge", "Data up, device–edge"),
        ("bytes_dense_down_edge_cloud", "Data down if uncompressed, edge–cloud"),
        ("energy_j_device", "Energy, devices (J)"),
        ("round_latency_upload_s", "Latency: upload, this round (s)"),
        ("round_dropped", "Dropouts, this round"),
        ("global_accuracy", "Test accuracy (shared test set)"),
        ("makespan_s", "Makespan (s)"),
        ("training.lr", "training.lr"),
    ],
)
def test_labels_read_as_words_with_units(key, text):
    assert label(key) == text

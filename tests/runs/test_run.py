"""A run writes everything a user needs, and the local engine is deterministic."""

import itertools
import json
import math

import pytest

from fedge.cli import main
from fedge.experiment.config import load_config
from fedge.results import RunStore, read_rows_csv
from fedge.runs.run import run_experiment

SUMMARY_KEYS = {
    "accuracy",
    "precision",
    "recall",
    "f1",
    "loss",
    "rounds",
    "sim_time_s",
    "wall_time_s",
    "bytes_up",
    "bytes_down",
    "energy_j",
}


def comparable(rows):
    return [{k: v for k, v in row.items() if not k.startswith("wall_time")} for row in rows]


def test_same_seed_gives_identical_rounds(tiny_config):
    first = run_experiment(load_config(tiny_config))
    second = run_experiment(load_config(tiny_config))
    assert first.run_id != second.run_id
    assert comparable(first.rows) == comparable(second.rows)
    other = run_experiment(load_config(tiny_config, ["seed=4"]))
    assert comparable(other.rows) != comparable(first.rows)


def test_run_directory_holds_config_metrics_store_plots_and_report(tiny_config):
    result = run_experiment(load_config(tiny_config, ["rounds=2"]))
    d = result.run_dir
    summary = json.loads((d / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert summary["rounds"] == 2
    assert summary["bytes_up"] > 0 and summary["energy_j"] > 0 and summary["sim_time_s"] > 0
    assert json.loads((d / "config.json").read_text())["seed"] == 3
    assert "torch" in json.loads((d / "versions.json").read_text())["versions"]
    rows = read_rows_csv(d / "metrics.csv")
    assert [r["round"] for r in rows] == [1, 2]
    hist = json.loads((d / "partition.json").read_text())["devices"]
    assert len(hist) == 10 and sum(sum(v) for v in hist.values()) <= 1437
    for png in (
        "accuracy_vs_round",
        "accuracy_vs_sim_time",
        "bytes_per_tier",
        "energy",
        "confusion",
    ):
        assert (d / "plots" / f"{png}.png").stat().st_size > 0
    html = (d / "report.html").read_text()
    assert f"{summary['accuracy']:.4f}" in html
    with RunStore(load_config(tiny_config).output.store) as store:
        run = store.get_run(result.run_id)
        assert run["status"] == "finished" and run["seed"] == 3
        assert [r["round"] for r in store.rounds(result.run_id)] == [1, 2]


def test_bytes_and_time_grow_every_round(tiny_config):
    rows = run_experiment(load_config(tiny_config)).rows
    for a, b in itertools.pairwise(rows):
        assert b["sim_time_s"] > a["sim_time_s"]
        assert b["bytes_up_device_edge"] > a["bytes_up_device_edge"]
        assert b["bytes_up_edge_cloud"] == b["bytes_up_device_edge"]


def test_per_round_latency_adds_up_to_the_cumulative_one(tiny_config):
    rows = run_experiment(load_config(tiny_config)).rows
    assert all(r["round_transmission_latency_s"] > 0 for r in rows)
    total = sum(r["round_transmission_latency_s"] for r in rows)
    assert total == pytest.approx(rows[-1]["transmission_latency_s"])


def test_target_accuracy_stops_early(tiny_config):
    result = run_experiment(load_config(tiny_config, ["rounds=6", "target_accuracy=0.05"]))
    assert result.summary["rounds"] == 1
    assert result.summary["rounds_to_target"] == 1


def test_cli_run_prints_the_table_and_report_rebuilds(capsys, tiny_config):
    assert main(["run", str(tiny_config), "--set", "rounds=1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "up_device_edge" in out
    report = out.strip().splitlines()[-1].removeprefix("report: ")
    run_dir = report.rsplit("/", 1)[0]
    assert main(["report", run_dir]) == 0
    assert "report.html" in capsys.readouterr().out


def test_list_shows_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "algorithms (algorithm):",
        "fedavg",
        "fedprox",
        "fedadam",
        "datasets (data.dataset):",
        "fashion_mnist",
        "partitioners (data.partition):",
        "regional",
        "models (model.name):",
        "fedavg_cnn",
        "aggregators (federation.aggregator):",
        "krum",
    ):
        assert name in out
    assert main(["list", "nothing"]) == 2


@pytest.mark.parametrize("algorithm", ["fedprox", "fedavgm", "fedadam", "fedyogi"])
def test_family_members_run(tiny_config, algorithm):
    sets = ["rounds=1", f"algorithm='{algorithm}'", "training.proximal_mu=0.01"]
    result = run_experiment(load_config(tiny_config, sets))
    assert not math.isnan(result.summary["accuracy"])


def test_moving_vehicles_hand_over_between_rounds(tiny_config):
    sets = ["system.mobility='highway'", "system.wan.bandwidth_mbps=0.1"]
    rows = run_experiment(load_config(tiny_config, sets)).rows
    assert rows[-1]["sim_time_s"] > 60
    assert sum(r["handovers"] for r in rows) > 0
    static = run_experiment(load_config(tiny_config, ["system.wan.bandwidth_mbps=0.1"])).rows
    assert sum(r["handovers"] for r in static) == 0


def test_dropouts_and_deadlines_reduce_participants(tiny_config):
    rows = run_experiment(load_config(tiny_config, ["system.dropout_prob=0.5"])).rows
    assert sum(r["participants"] for r in rows) < 3 * 4
    assert sum(r["dropped"] for r in rows[-1:]) > 0
    late = run_experiment(load_config(tiny_config, ["federation.deadline_s=0.001"])).rows
    assert all(r["participants"] == 0 for r in late)
    assert late[-1]["sim_time_s"] == pytest.approx(0.003)


@pytest.mark.slow
def test_quickstart_round_on_real_fashion_mnist(tmp_path):
    from pathlib import Path

    from fedge.learning.fashion import find_files

    if find_files() is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    quickstart = Path(__file__).parents[2] / "examples" / "quickstart.toml"
    sets = [
        "rounds=1",
        "data.test_limit=1000",
        f"output.dir='{tmp_path}'",
        f"output.store='{tmp_path / 's.sqlite'}'",
        "output.progress=false",
    ]
    result = run_experiment(load_config(quickstart, sets))
    assert result.summary["accuracy"] > 0.3
    assert result.summary["bytes_up_edge_cloud"] > 10 * 6_000_000


def test_target_can_be_recorded_without_stopping(tiny_config):
    sets = ["rounds=3", "target_accuracy=0.05", "stop_at_target=false"]
    result = run_experiment(load_config(tiny_config, sets))
    assert result.summary["rounds"] == 3
    assert result.summary["rounds_to_target"] == 1
    assert result.summary["transmission_latency_to_target_s"] > 0

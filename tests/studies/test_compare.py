"""fedge compare: variants x seeds, means with Student-t 95% CIs, files, early bad input."""

import csv
import json
import math

import numpy as np
import pytest

from fedge.cli import main
from fedge.core.errors import ConfigError
from fedge.results import RunStore
from fedge.results.comparison import format_mean_ci, mean_curve
from fedge.studies.compare import ci95, parse_vary, plan, split_values, summarise, variants


def test_variants_are_the_cartesian_product_with_values_read_like_set():
    found = variants([parse_vary("algorithm=fedavg,fedprox"), parse_vary("training.lr=0.1,1e-2")])
    assert [v.values for v in found] == [
        {"algorithm": "fedavg", "training.lr": 0.1},
        {"algorithm": "fedavg", "training.lr": 0.01},
        {"algorithm": "fedprox", "training.lr": 0.1},
        {"algorithm": "fedprox", "training.lr": 0.01},
    ]
    assert found[1].overrides == ("algorithm=fedavg", "training.lr=1e-2")
    assert found[1].label == "algorithm=fedavg, training.lr=1e-2"
    assert [v.values for v in variants([])] == [{}]


def test_values_split_at_top_level_commas_only():
    assert split_values("1, 2 ,3") == ["1", "2", "3"]
    assert split_values('[1, 2],"a,b",{ x = 1, y = 2 }') == ["[1, 2]", '"a,b"', "{ x = 1, y = 2 }"]
    key, values = parse_vary("federation.aggregator_params={ f = 1 },{ f = 2 }")
    assert [v.values[key] for v in variants([(key, values)])] == [{"f": 1}, {"f": 2}]


@pytest.mark.parametrize("text", ["rounds", "=1,2", "rounds=", "rounds=1,,2", "rounds= , "])
def test_a_malformed_vary_names_the_item(text):
    with pytest.raises(ConfigError, match="--vary"):
        parse_vary(text)


def test_a_key_varied_twice_is_rejected():
    with pytest.raises(ConfigError, match="rounds"):
        variants([("rounds", ["1"]), ("rounds", ["2"])])


def test_ci95_matches_a_hand_computation():
    # mean 2.5, s = sqrt(5/3), t(0.975, 3) = 3.182446305
    assert ci95([1.0, 2.0, 3.0, 4.0]) == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2)
    # s = sqrt(2), t(0.975, 1) = 12.70620474
    assert ci95([1.0, 3.0]) == pytest.approx(12.70620474)
    assert ci95([0.7]) == 0.0
    assert math.isnan(ci95([]))


def test_summarise_skips_missing_and_nan_values():
    stats = summarise(
        [
            {"accuracy": 0.5, "bytes_up": 10, "transmission_latency_s": float("nan")},
            {"accuracy": 0.7, "bytes_up": 30},
        ]
    )
    assert stats["accuracy"].mean == pytest.approx(0.6)
    assert stats["accuracy"].values == [0.5, 0.7]
    assert stats["bytes_up"].ci95 == pytest.approx(ci95([10, 30]))
    assert "transmission_latency_s" not in stats and "f1" not in stats


def test_mean_curve_averages_each_evaluated_round_over_the_runs_that_have_it():
    a = [{"round": 1, "accuracy": 0.2, "sim_time_s": 1.0}, {"round": 2, "sim_time_s": 2.0}]
    b = [
        {"round": 1, "accuracy": 0.4, "sim_time_s": 3.0},
        {"round": 2, "accuracy": 0.6, "sim_time_s": 4.0},
    ]
    assert mean_curve([a, b]) == [
        # t(0.975, 1 dof) = 12.7062; sd([0.2, 0.4]) / sqrt(2) = 0.1
        {
            "round": 1,
            "accuracy": pytest.approx(0.3),
            "accuracy_ci95": pytest.approx(1.27062, rel=1e-4),
            "sim_time_s": 2.0,
        },
        {"round": 2, "accuracy": 0.6, "sim_time_s": 4.0},
    ]


def test_mean_and_ci_text():
    assert format_mean_ci("accuracy", 0.81234, 0.01, 2) == "0.8123 ± 0.0100"
    assert format_mean_ci("bytes_up", 2_000_000, 1500, 3) == "2.00 MB ± 1.50 KB"
    assert format_mean_ci("sim_time_s", 3.0, 0.0, 1) == "3.00"


def test_plan_assigns_seeds_from_the_config_seed(tiny_config):
    _, planned = plan(tiny_config, ["training.lr=0.1,0.05"], 3)
    assert [[c.seed for c in configs] for _, configs in planned] == [[3, 4, 5], [3, 4, 5]]
    assert [configs[0].training.lr for _, configs in planned] == [0.1, 0.05]


def test_compare_writes_table_csv_json_report_and_every_run(
    tiny_config, tmp_path, capsys, monkeypatch
):
    # per-run plots cost about a second each and are tested elsewhere; comparison plots stay
    monkeypatch.setattr("fedge.runs.run.plot_run", lambda *args, **kwargs: [])
    out = tmp_path / "cmp"
    argv = ["compare", str(tiny_config), "--vary", "training.lr=0.1,0.05", "--seeds", "2"]
    assert main([*argv, "--set", "rounds=1", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "training.lr" in printed and "accuracy" in printed and " ± " in printed
    (directory,) = out.glob("compare-*-tiny")
    entries = json.loads((directory / "comparison.json").read_text())
    assert [e["variant"] for e in entries] == [{"training.lr": 0.1}, {"training.lr": 0.05}]
    with open(directory / "comparison.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    for entry, row in zip(entries, table, strict=True):
        assert entry["n"] == 2 and entry["seeds"] == [3, 4] and row["n"] == "2"
        summaries = [_run_file(directory, run_id, "summary.json") for run_id in entry["runs"]]
        configs = [_run_file(directory, run_id, "config.json") for run_id in entry["runs"]]
        assert [c["seed"] for c in configs] == [3, 4]
        assert {c["training"]["lr"] for c in configs} == {entry["variant"]["training.lr"]}
        for metric in ("accuracy", "f1", "sim_time_s", "bytes_up"):
            values = [s[metric] for s in summaries]
            assert entry["metrics"][metric]["values"] == pytest.approx(values)
            assert entry["metrics"][metric]["mean"] == pytest.approx(np.mean(values))
            assert float(row[f"{metric}_mean"]) == pytest.approx(np.mean(values))
            assert float(row[f"{metric}_ci95"]) == pytest.approx(ci95(values))
    html = (directory / "comparison.html").read_text()
    assert "data:image/png;base64" in html and entries[0]["runs"][0] in html
    assert {p.name for p in (directory / "plots").glob("*.png")} >= {
        "comparison_accuracy_vs_round.png",
        "comparison_accuracy_vs_sim_time.png",
    }
    with RunStore(tmp_path / "runs" / "fedge.sqlite") as store:
        assert len(store.list_runs()) == 4


def _run_file(directory, run_id, name):
    return json.loads((directory / "runs" / run_id / name).read_text())


@pytest.mark.parametrize(
    ("vary", "seeds", "named"),
    [
        ("training.lr=0.1,-1", "2", "training.lr"),
        ("algorithm=fedavg,nosuch", "2", "algorithm"),
        ("training.lrr=0.1", "2", "training.lrr"),
        ("training.lr", "2", "--vary"),
        ("training.lr=", "2", "--vary"),
        ("training.lr=0.1", "0", "--seeds"),
    ],
)
def test_bad_input_exits_2_before_any_run(tiny_config, tmp_path, capsys, vary, seeds, named):
    out = tmp_path / "cmp"
    argv = ["compare", str(tiny_config), "--vary", vary, "--seeds", seeds, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedge: error:") and named in err[0]
    assert not out.exists() and not (tmp_path / "runs").exists()

"""`fedge partition-model`: a real profile, one JSON object per (edges, bandwidth)."""

import json

import pytest

from fedge.cli import main
from fedge.learning import build_model, profile_blocks
from fedge.orchestration.split_point import EdgePool, Workload
from fedge.studies.partition_model import curve_rows, model_layers, parse_input_shape

SMALL = ["partition-model", "--model", "lenet5", "--input", "1x28x28", "--edges", "1,4"]


def test_layers_follow_the_block_profile():
    layers = model_layers("lenet5", (1, 28, 28))
    prof = profile_blocks(build_model("lenet5", (1, 28, 28), 10, seed=0), (1, 28, 28))
    assert [ly.name for ly in layers] == [b.name for b in prof.layers]
    assert sum(ly.flops for ly in layers) == pytest.approx(prof.flops_forward)


def test_json_has_one_object_per_edges_and_bandwidth(capsys):
    rc = main([*SMALL, "--bandwidth-mbps", "1,100", "--objective", "latency", "--json"])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["edges"], r["bandwidth_mbps"]) for r in rows] == [(1, 1), (1, 100), (4, 1), (4, 100)]
    for r in rows:
        assert {
            "cut",
            "latency_s",
            "energy_j",
            "memory_bytes",
            "feasible",
            "brute_force_cut",
        } <= r.keys()
        assert r["cut"] == r["brute_force_cut"]
        if r["feasible"]:
            assert r["latency_gain_vs_best_end"] >= 1.0  # the latency objective never loses


def test_tight_limits_say_which_constraint_fails(capsys):
    assert main([*SMALL, "--max-latency-ms", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "no: latency" in out and "brute force over the same cost model agrees" in out


def test_curves_cover_every_cut(capsys, tmp_path):
    layers = model_layers("lenet5", (1, 28, 28))
    rows = curve_rows(layers, EdgePool(), Workload(), [1, 4])
    assert [(r["edges"], r["cut"]) for r in rows] == [
        (x, j) for x in (1, 4) for j in range(len(layers) + 1)
    ]
    assert rows[0]["memory_mb"] == 0 and rows[0]["after"] == "input"
    assert main([*SMALL, "--curves", "--plots", str(tmp_path)]) == 0
    assert "power_w" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["energy.png", "latency.png", "memory.png"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--input", "3x-2"], "--input"),
        (["--edges", "0,10"], "--edges"),
        (["--bandwidth-mbps", "fast"], "--bandwidth-mbps"),
        (["--arrival-rate", "-1"], "--arrival-rate"),
        (["--model", "vgg99"], "model"),
    ],
)
def test_bad_arguments_are_named(capsys, args, field):
    assert main([*SMALL, *args]) == 2
    assert field in capsys.readouterr().err


def test_parse_input_shape():
    assert parse_input_shape("3x224x224") == (3, 224, 224)

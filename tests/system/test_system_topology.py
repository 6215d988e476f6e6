"""Topology: generators, lookups, coverage, file loading and its error messages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedge.core.errors import ConfigError
from fedge.system import (
    ComputeProfile,
    Node,
    Profiles,
    grid_city,
    highway,
    load_topology,
    random_geometric,
    save_topology,
)


def test_highway_rsus_every_spacing_and_every_device_covered() -> None:
    topo = highway(8, 200, np.random.default_rng(0), spacing_m=1000.0, coverage_m=600.0)
    xs = [e.x_m for e in topo.edges]
    assert np.allclose(np.diff(xs), 1000.0)
    assert xs[0] == 500.0
    assert all(e.y_m == 0.0 and e.coverage_m == 600.0 for e in topo.edges)
    assert all(0.0 <= d.x_m < 8000.0 and abs(d.y_m) < 10.0 for d in topo.devices)
    assert all(topo.covering_edges(d.x_m, d.y_m) for d in topo.devices)
    assert topo.edge_neighbors["edge0"] == ("edge1",)
    assert topo.edge_neighbors["edge3"] == ("edge2", "edge4")
    assert topo.ids("edge") == [f"edge{i}" for i in range(8)]
    assert topo.ids("device")[-1] == "dev199"
    assert topo.ids("cloud") == ["cloud"]


def test_generators_are_reproducible_and_heterogeneous() -> None:
    a = highway(4, 50, np.random.default_rng(7))
    b = highway(4, 50, np.random.default_rng(7))
    c = highway(4, 50, np.random.default_rng(8))
    assert a == b
    assert a != c
    flops = [d.compute.flops_per_s for d in a.devices]
    assert all(1e9 <= f <= 1e10 for f in flops)
    assert len(set(flops)) == len(flops)
    # log-uniform: roughly half of the devices below the geometric mean
    below = sum(f < math.sqrt(1e9 * 1e10) for f in flops)
    assert 10 < below < 40
    assert a.edges[0].compute.flops_per_s == 1e12
    assert a.cloud.compute.flops_per_s == 1e14
    assert a.wan.bandwidth_bps == 100e6 and a.wan.latency_s == 0.05
    assert a.backhaul.bandwidth_bps == 1e9 and a.backhaul.latency_s == 0.005


def test_custom_profiles_reach_the_nodes() -> None:
    edge = ComputeProfile(5e11, 8e9, 10.0, 1e-11)
    topo = highway(
        2, 5, np.random.default_rng(0), profiles=Profiles(edge=edge, device_flops_range=(2e9, 2e9))
    )
    assert topo.edges[1].compute == edge
    assert {d.compute.flops_per_s for d in topo.devices} == {2e9}


def test_random_geometric_and_grid_city_cover_every_device() -> None:
    rng = np.random.default_rng(3)
    rg = random_geometric(6, 100, rng, area_m=3000.0, coverage_m=400.0, neighbor_radius_m=1200.0)
    assert all(rg.covering_edges(d.x_m, d.y_m) for d in rg.devices)
    for e in rg.edges:
        for peer in rg.edge_neighbors[e.id]:
            assert rg.distance_m(e.id, peer) <= 1200.0
            assert e.id in rg.edge_neighbors[peer]
    city = grid_city(3, 4, 80, rng, block_m=400.0)
    assert len(city.edges) == 12
    assert all(city.covering_edges(d.x_m, d.y_m) for d in city.devices)
    assert city.edge_neighbors["edge5"] == ("edge1", "edge4", "edge6", "edge9")
    for d in city.devices:  # on a street
        assert (
            min(d.x_m % 400.0, -d.x_m % 400.0) < 1e-6 or min(d.y_m % 400.0, -d.y_m % 400.0) < 1e-6
        )


def test_covering_edges_nearest_first() -> None:
    topo = highway(3, 0, np.random.default_rng(0), spacing_m=1000.0, coverage_m=1200.0)
    assert topo.covering_edges(1400.0, 0.0) == ["edge1", "edge0", "edge2"]
    assert topo.covering_edges(5000.0, 0.0) == []
    assert topo.nearest_edge(5000.0, 0.0) == "edge2"


def test_bad_values_are_config_errors() -> None:
    rng = np.random.default_rng(0)
    topo = highway(2, 2, rng)
    with pytest.raises(ConfigError) as err:
        topo.node("edge9")
    assert err.value.field == "node_id" and "edge0..edge1" in err.value.allowed
    with pytest.raises(ConfigError, match="tier"):
        topo.ids("fog")
    with pytest.raises(ConfigError, match="tier"):
        Node("x", "fog", 0.0, 0.0, 0.0, topo.cloud.compute)
    with pytest.raises(ConfigError, match=r"edge0\.coverage_m"):
        Node("edge0", "edge", 0.0, 0.0, 0.0, topo.cloud.compute)
    with pytest.raises(ConfigError, match="n_edges"):
        highway(0, 2, rng)
    with pytest.raises(ConfigError, match="spacing_m"):
        highway(2, 2, rng, spacing_m=-1.0)


SMALL_TOML = """
neighbor_radius_m = 1500.0

[profiles.device]
flops_per_s = 4e9

[wan]
bandwidth_bps = 5e7
latency_s = 0.02
trace_csv = "wan.csv"

[wireless]
bandwidth_hz = 2e6

[wireless.path_loss]
model = "log_distance"
exponent = 3.5

[[edges]]
x_m = 0.0
y_m = 0.0
coverage_m = 500.0

[[edges]]
x_m = 1000.0
y_m = 0.0
coverage_m = 500.0
flops_per_s = 2e12

[[edges]]
x_m = 5000.0
y_m = 0.0
coverage_m = 500.0

[[devices]]
x_m = 100.0
y_m = 0.0

[[devices]]
x_m = 900.0
y_m = 10.0
flops_per_s = 2e9
"""


def test_load_toml_and_round_trip(tmp_path: Path) -> None:
    (tmp_path / "wan.csv").write_text("time_s,latency_s\n0,0.02\n100,2.0\n")
    src = tmp_path / "topo.toml"
    src.write_text(SMALL_TOML)
    topo = load_topology(src)
    assert [e.x_m for e in topo.edges] == [0.0, 1000.0, 5000.0]
    assert topo.edges[1].compute.flops_per_s == 2e12
    assert topo.edges[0].compute == Profiles().edge
    assert [d.compute.flops_per_s for d in topo.devices] == [4e9, 2e9]
    assert topo.edge_neighbors == {"edge0": ("edge1",), "edge1": ("edge0",), "edge2": ()}
    assert topo.wan.bandwidth_bps == 5e7 and topo.wan.latency_at(150.0) == 2.0
    assert topo.backhaul == Profiles().backhaul
    assert topo.wireless.bandwidth_hz == 2e6 and topo.wireless.path_loss.exponent == 3.5
    for name in ("copy.toml", "copy.json"):
        save_topology(topo, tmp_path / name)
        assert load_topology(tmp_path / name) == topo
    data = json.loads((tmp_path / "copy.json").read_text())
    assert data["edges"][0]["neighbors"] == ["edge1"]


def test_load_json_with_configured_neighbors(tmp_path: Path) -> None:
    data = {
        "edges": [
            {"x_m": 0, "y_m": 0, "coverage_m": 300, "neighbors": ["edge2"]},
            {"x_m": 500, "y_m": 0, "coverage_m": 300},
            {"x_m": 9000, "y_m": 0, "coverage_m": 300},
        ],
        "devices": [{"x_m": 10, "y_m": 0}],
        "backhaul": {
            "bandwidth_bps": 1e8,
            "trace": {"times_s": [0, 5], "latencies_s": [0.01, 0.2]},
        },
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    topo = load_topology(path)
    assert topo.edge_neighbors == {"edge0": ("edge2",), "edge1": (), "edge2": ("edge0",)}
    assert topo.backhaul.latency_at(6.0) == 0.2
    save_topology(topo, tmp_path / "again.json")
    assert load_topology(tmp_path / "again.json") == topo


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (
            ("coverage_m = 500.0\nflops_per_s = 2e12", "coverage_m = -5.0\nflops_per_s = 2e12"),
            "edges[1].coverage_m",
        ),
        (("bandwidth_bps = 5e7", "bandwidth_bps = -1.0"), "wan.bandwidth_bps"),
        (("bandwidth_hz = 2e6", "bandwidth_hz = 0"), "wireless.bandwidth_hz"),
        (('model = "log_distance"', 'model = "okumura"'), "wireless.path_loss.model"),
        (("flops_per_s = 4e9", "flops_per_s = 0.0"), "profiles.device.flops_per_s"),
        (("x_m = 900.0", "x_pos = 900.0"), "devices[1].x_pos"),
        (("x_m = 900.0", ""), "devices[1].x_m"),
        (("flops_per_s = 2e9", 'flops_per_s = "fast"'), "devices[1].flops_per_s"),
        (("neighbor_radius_m = 1500.0", "neighbor_radius_m = -3.0"), "neighbor_radius_m"),
        (('trace_csv = "wan.csv"', 'trace_csv = "missing.csv"'), "wan.trace_csv"),
    ],
)
def test_load_errors_name_the_field(tmp_path: Path, edit: tuple[str, str], field: str) -> None:
    (tmp_path / "wan.csv").write_text("time_s,latency_s\n0,0.02\n")
    old, new = edit
    assert old in SMALL_TOML
    path = tmp_path / "bad.toml"
    path.write_text(SMALL_TOML.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_topology(path)
    assert err.value.field == field


def test_load_rejects_unknown_neighbor_and_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    path.write_text(
        json.dumps({"edges": [{"x_m": 0, "y_m": 0, "coverage_m": 1, "neighbors": ["edge7"]}]})
    )
    with pytest.raises(ConfigError) as err:
        load_topology(path)
    assert err.value.field == "edges[0].neighbors" and err.value.value == "edge7"
    path.write_text(json.dumps({"devices": []}))
    with pytest.raises(ConfigError, match="edges"):
        load_topology(path)
    (tmp_path / "x.yaml").write_text("")
    with pytest.raises(ConfigError, match="toml"):
        load_topology(tmp_path / "x.yaml")
    (tmp_path / "broken.toml").write_text("[[edges]\n")
    with pytest.raises(ConfigError, match="topology file"):
        load_topology(tmp_path / "broken.toml")

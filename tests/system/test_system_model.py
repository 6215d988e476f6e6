"""SystemModel: routes, transfer costs by hand, compute, coverage policy, availability."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.core.errors import ConfigError
from fedge.system import (
    Availability,
    ComputeProfile,
    HighwayMobility,
    LatencyTrace,
    LinkProfile,
    PathLoss,
    Profiles,
    SystemModel,
    Topology,
    WirelessProfile,
    build_topology,
    highway,
)

# log-distance path loss 40 + 30·log10(d): at 100 m, 100 dB -> gain 1e-10; with 0.2 W,
# N0 = 1e-20 W/Hz and 1 MHz the SNR is 2000 (uplink) and 10000 (downlink at 1 W).
WIRELESS = WirelessProfile(
    bandwidth_hz=1e6,
    device_tx_power_w=0.2,
    edge_tx_power_w=1.0,
    noise_psd_w_per_hz=1e-20,
    path_loss=PathLoss(model="log_distance", ref_loss_db=40.0, exponent=3.0),
)
UP_RATE_BPS = 1e6 * math.log2(2001.0)
DOWN_RATE_BPS = 1e6 * math.log2(10001.0)


def line_topology(
    edge_xs: tuple[float, ...] = (0.0, 1000.0, 2000.0),
    device_xs: tuple[float, ...] = (100.0, 1900.0),
    coverage_m: float = 400.0,
    neighbors: dict[str, tuple[str, ...]] | None = None,
    wan: LinkProfile | None = None,
) -> Topology:
    profiles = Profiles(
        device=ComputeProfile(1e9, 1e9, static_power_w=1.0, energy_per_flop_j=1e-10),
        device_flops_range=(1e9, 1e9),
        wan=wan or LinkProfile(1e8, 0.05),
        backhaul=LinkProfile(1e9, 0.005),
        wireless=WIRELESS,
    )
    edges = [(x, 0.0, coverage_m) for x in edge_xs]
    devices = [(x, 0.0) for x in device_xs]
    if neighbors is None:
        neighbors = {f"edge{i}": (f"edge{i + 1}",) for i in range(len(edge_xs) - 1)}
    return build_topology(edges, devices, np.random.default_rng(0), profiles, neighbors)


def test_device_to_cloud_transfer_matches_hand_computation() -> None:
    model = SystemModel(line_topology())
    nbytes = 1_000_000
    cost = model.transfer("dev0", "cloud", nbytes, t_s=10.0)
    wireless_s = 8e6 / UP_RATE_BPS
    wan_s = 8e6 / 1e8 + 0.05
    assert [(h.src, h.dst, h.tier, h.direction) for h in cost.hops] == [
        ("dev0", "edge0", "device-edge", "up"),
        ("edge0", "cloud", "edge-cloud", "up"),
    ]
    assert cost.hops[0].time_s == pytest.approx(wireless_s)
    assert cost.hops[0].tx_energy_j == pytest.approx(0.2 * wireless_s)
    assert cost.hops[1].start_s == pytest.approx(10.0 + wireless_s)
    assert cost.hops[1].time_s == pytest.approx(wan_s)
    assert cost.hops[1].tx_energy_j == 0.0
    assert cost.time_s == pytest.approx(wireless_s + wan_s)
    assert cost.nbytes_by_tier() == {"device-edge": nbytes, "edge-cloud": nbytes}


def test_cloud_to_device_is_the_reverse_with_edge_power() -> None:
    model = SystemModel(line_topology())
    cost = model.transfer("cloud", "dev0", 1000, t_s=0.0)
    assert [(h.src, h.dst, h.direction) for h in cost.hops] == [
        ("cloud", "edge0", "down"),
        ("edge0", "dev0", "down"),
    ]
    assert cost.hops[1].time_s == pytest.approx(8000 / DOWN_RATE_BPS)
    assert cost.tx_energy_j == pytest.approx(1.0 * 8000 / DOWN_RATE_BPS)


def test_routes() -> None:
    model = SystemModel(line_topology())
    assert model.route("edge0", "edge1", 0.0) == [("edge0", "edge1")]
    assert model.route("edge0", "edge2", 0.0) == [("edge0", "edge1"), ("edge1", "edge2")]
    assert model.route("dev0", "dev1", 0.0) == [
        ("dev0", "edge0"),
        ("edge0", "edge1"),
        ("edge1", "edge2"),
        ("edge2", "dev1"),
    ]
    assert model.route("dev0", "edge2", 0.0)[0] == ("dev0", "edge0")
    assert model.route("dev0", "dev0", 0.0) == []
    assert model.route("edge1", "edge1", 0.0) == []
    peer = model.transfer("edge0", "edge2", 1_000_000, 0.0)
    assert all(h.tier == "edge-edge" and h.direction == "peer" for h in peer.hops)
    assert peer.time_s == pytest.approx(2 * (8e6 / 1e9 + 0.005))
    disconnected = SystemModel(line_topology(neighbors={}))
    assert disconnected.route("edge0", "edge2", 0.0) == [("edge0", "cloud"), ("cloud", "edge2")]
    assert disconnected.neighbors("edge1") == []
    assert model.neighbors("edge1") == ["edge0", "edge2"]


def test_wan_latency_trace_applies_at_hop_start() -> None:
    trace = LatencyTrace((0.0, 100.0), (0.05, 2.0))
    model = SystemModel(line_topology(wan=LinkProfile(1e8, trace=trace)))
    assert model.transfer("edge0", "cloud", 0, 50.0).time_s == pytest.approx(0.05)
    assert model.transfer("edge0", "cloud", 0, 150.0).time_s == pytest.approx(2.0)


def test_compute_cost() -> None:
    model = SystemModel(line_topology())
    cost = model.compute("dev0", 2e9)
    assert cost.time_s == pytest.approx(2.0)
    assert cost.energy_j == pytest.approx(1.0 * 2.0 + 1e-10 * 2e9)
    edge = model.compute("edge0", 2e9)
    assert edge.time_s == pytest.approx(2e9 / Profiles().edge.flops_per_s)
    slow = SystemModel(
        line_topology(), availability=Availability(straggler_prob=1.0, straggler_slowdown=3.0)
    )
    assert slow.compute("dev0", 2e9, round_index=0).time_s == pytest.approx(6.0)
    assert slow.compute("dev0", 2e9).time_s == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="node_id"):
        model.compute("dev9", 1.0)


def test_out_of_coverage_policy() -> None:
    topo = line_topology(device_xs=(100.0, 550.0))  # dev1: 550 m / 450 m away, coverage 400 m
    strict = SystemModel(topo)
    with pytest.raises(ConfigError) as err:
        strict.validate()
    assert "dev1" in err.value.field
    assert err.value.value == (550.0, 0.0)
    assert "nearest" in err.value.allowed
    with pytest.raises(ConfigError, match="dev1"):
        strict.attachment("dev1", 0.0)
    assert strict.attached_devices("edge0", 0.0) == ["dev0"]
    lenient = SystemModel(topo, out_of_coverage="nearest")
    lenient.validate()
    assert lenient.attachment("dev1", 0.0) == "edge1"  # the nearest, though out of range
    cost = lenient.transfer("dev1", "cloud", 1000, 0.0)
    assert cost.hops[0].dst == lenient.attachment("dev1", 0.0)
    with pytest.raises(ConfigError, match="out_of_coverage"):
        SystemModel(topo, out_of_coverage="ignore")


def test_attachment_follows_mobility_and_handovers() -> None:
    topo = highway(4, 12, np.random.default_rng(0))
    model = SystemModel(topo, HighwayMobility(topo, np.random.default_rng(1)))
    model.validate()
    for t_s in (0.0, 30.0):
        groups = [model.attached_devices(e, t_s) for e in model.ids("edge")]
        assert sorted(d for g in groups for d in g) == sorted(model.ids("device"))
    events = model.handovers(0.0, 60.0)
    assert events
    first = events[0]
    assert model.attachment(first.device, first.time_s) == first.to_edge
    route = model.route(first.device, "cloud", first.time_s)
    assert route[0] == (first.device, first.to_edge)
    with pytest.raises(ConfigError):
        model.attachment("edge0", 0.0)


def test_availability_only_for_devices() -> None:
    model = SystemModel(line_topology(), availability=Availability(dropout_prob=1.0))
    assert model.is_available("cloud", 3) and model.is_available("edge1", 3)
    assert not model.is_available("dev0", 3)
    with pytest.raises(ConfigError):
        model.is_available("dev42", 0)
    assert model.tier("edge2") == "edge" and model.ids("cloud") == ["cloud"]

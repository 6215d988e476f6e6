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
    PeerGraph,
    Profiles,
    StaticMobility,
    SystemModel,
    Topology,
    TraceMobility,
    WirelessProfile,
    build_topology,
    highway,
)
from fedge.system.model import HOP_TIERS

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


# A direct D2D radio: 0.1 W, 2 MHz, the same log-distance path loss and noise, 3 ms access delay.
D2D = WirelessProfile(
    bandwidth_hz=2e6,
    device_tx_power_w=0.1,
    noise_psd_w_per_hz=1e-20,
    path_loss=PathLoss(model="log_distance", ref_loss_db=40.0, exponent=3.0),
    latency_s=0.003,
)


def d2d_rate_bps(distance_m: float) -> float:
    gain = 10 ** (-(40.0 + 30.0 * math.log10(distance_m)) / 10)
    return 2e6 * math.log2(1 + 0.1 * gain / (1e-20 * 2e6))


def test_direct_d2d_transfer_is_one_shannon_hop_charged_to_the_sender() -> None:
    topo = line_topology(device_xs=(100.0, 300.0, 1900.0))
    model = SystemModel(topo, d2d=D2D)
    nbytes = 250_000
    cost = model.transfer("dev1", "dev0", nbytes, t_s=4.0)
    [hop] = cost.hops
    airtime_s = 8 * nbytes / d2d_rate_bps(200.0)
    assert (hop.src, hop.dst, hop.tier, hop.direction) == ("dev1", "dev0", "device-device", "peer")
    assert hop.start_s == 4.0
    assert cost.time_s == pytest.approx(airtime_s + 0.003, rel=1e-12)
    assert hop.tx_energy_j == pytest.approx(0.1 * airtime_s, rel=1e-12)
    assert cost.nbytes_by_tier() == {"device-device": nbytes}
    assert "device-device" in HOP_TIERS
    # the rate follows the distance: devices 1800 m apart are slower, and still one hop
    far = model.transfer("dev0", "dev2", nbytes, 0.0)
    assert far.time_s == pytest.approx(8 * nbytes / d2d_rate_bps(1800.0) + 0.003, rel=1e-12)
    assert model.route("dev0", "dev2", 0.0) == [("dev0", "dev2")]
    # device <-> infrastructure traffic is unchanged
    assert [h.tier for h in model.transfer("dev0", "cloud", 10, 0.0).hops] == [
        "device-edge",
        "edge-cloud",
    ]


def test_direct_d2d_uses_positions_at_the_hop_start() -> None:
    topo = line_topology(device_xs=(100.0, 300.0))
    traces = {
        "dev0": [(0.0, 100.0, 0.0), (10.0, 100.0, 0.0)],
        "dev1": [(0.0, 300.0, 0.0), (10.0, 500.0, 0.0)],
    }
    model = SystemModel(topo, TraceMobility(traces), d2d=D2D)
    assert model.transfer("dev0", "dev1", 1000, 10.0).time_s == pytest.approx(
        8000 / d2d_rate_bps(400.0) + 0.003
    )


def test_relayed_d2d_goes_through_both_edges_and_the_backhaul() -> None:
    model = SystemModel(line_topology())
    cost = model.transfer("dev0", "dev1", 1000, 0.0)
    assert [(h.src, h.dst, h.tier, h.direction) for h in cost.hops] == [
        ("dev0", "edge0", "device-edge", "up"),
        ("edge0", "edge1", "edge-edge", "peer"),
        ("edge1", "edge2", "edge-edge", "peer"),
        ("edge2", "dev1", "device-edge", "down"),
    ]
    assert cost.hops[0].tx_energy_j == pytest.approx(0.2 * 8000 / UP_RATE_BPS)
    assert cost.hops[-1].tx_energy_j == pytest.approx(1.0 * 8000 / DOWN_RATE_BPS)
    same_edge = SystemModel(line_topology(device_xs=(100.0, 200.0)))
    assert same_edge.route("dev0", "dev1", 0.0) == [("dev0", "edge0"), ("edge0", "dev1")]


class CountingStatic(StaticMobility):
    def __init__(self, topology: Topology) -> None:
        super().__init__(topology)
        self.calls = 0

    def position(self, device_id: str, t_s: float) -> tuple[float, float]:
        self.calls += 1
        return super().position(device_id, t_s)


def test_peers_follow_the_graph_and_are_computed_once_when_static() -> None:
    topo = line_topology(device_xs=(100.0, 150.0, 300.0, 1900.0))
    mobility = CountingStatic(topo)
    model = SystemModel(topo, mobility, peers=PeerGraph(mode="radius", radius_m=200.0))
    assert model.peers("dev0", 0.0) == ["dev1", "dev2"]
    assert model.peers("dev2", 50.0) == ["dev0", "dev1"]
    assert model.peers("dev3", 99.0) == []
    assert mobility.calls == 4  # one position per device, once
    default = SystemModel(topo)
    assert default.peer_graph == PeerGraph()
    assert default.peers("dev3", 0.0) == ["dev0", "dev1", "dev2"]  # knn, k=4 > 3 others
    with pytest.raises(ConfigError):
        default.peers("edge0", 0.0)


def test_edge_peer_graph_groups_devices_by_attachment() -> None:
    topo = line_topology(device_xs=(100.0, 1100.0, 900.0, 50.0))
    model = SystemModel(topo, peers=PeerGraph(mode="edge"))
    assert model.peers("dev0", 0.0) == ["dev3"]
    assert model.peers("dev1", 0.0) == ["dev2"]


def test_peers_change_as_vehicles_move() -> None:
    topo = highway(3, 10, np.random.default_rng(0))
    mobility = HighwayMobility(topo, np.random.default_rng(1))
    model = SystemModel(topo, mobility, peers=PeerGraph(mode="knn", k=2))
    graph = PeerGraph(mode="knn", k=2)
    changed = False
    before = {d: model.peers(d, 0.0) for d in model.ids("device")}
    for t_s in (0.0, 20.0, 45.0):
        positions = {d: mobility.position(d, t_s) for d in model.ids("device")}
        expected = graph.neighbours(positions, None)
        now = {d: model.peers(d, t_s) for d in model.ids("device")}
        assert now == {d: list(p) for d, p in expected.items()}
        changed = changed or now != before
    assert changed


def test_configured_peer_links_are_checked_against_the_devices() -> None:
    topo = line_topology()
    links = (("dev0", "dev1"),)
    model = SystemModel(topo, peers=PeerGraph(mode="configured", links=links))
    assert model.peers("dev1", 0.0) == ["dev0"]
    with pytest.raises(ConfigError) as err:
        SystemModel(topo, peers=PeerGraph(mode="configured", links=(("dev0", "dev7"),)))
    assert err.value.field == "system.peers.links[0]"
    assert "dev0, dev1" in err.value.allowed

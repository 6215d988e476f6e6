"""The simulated transport charges time, bytes and energy exactly as the system model says."""

import math

import numpy as np
import pytest
import torch

from fedge.core.message import Message
from fedge.core.node import NodeApp
from fedge.core.update import Update, Work
from fedge.runtime import LocalTransport, NodeSet, SimulatedTransport
from fedge.runtime.local import flat_membership
from fedge.runtime.simulated import SYNC, visible_nodes
from fedge.system.availability import Availability
from fedge.system.compute import ComputeProfile
from fedge.system.generators import build_topology
from fedge.system.model import SystemModel
from fedge.system.network import LinkProfile, PathLoss, WirelessProfile, path_gain, shannon_rate_bps
from fedge.system.peers import PeerGraph
from fedge.system.topology import Profiles

DEVICE = ComputeProfile(
    flops_per_s=1e9, memory_bytes=1e9, static_power_w=2.0, energy_per_flop_j=1e-9
)
WAN = LinkProfile(bandwidth_bps=8e6, latency_s=0.05)
WIRELESS = WirelessProfile(bandwidth_hz=1e6, device_tx_power_w=0.5, edge_tx_power_w=1.0)


def three_nodes(dropout: float = 0.0, n_devices: int = 1) -> SystemModel:
    """A cloud, one edge at x=0 and devices 100 m away, one after the other along x."""
    profiles = Profiles(device=DEVICE, device_flops_range=(1e9, 1e9), wan=WAN, wireless=WIRELESS)
    devices = [(100.0 * (i + 1), 0.0) for i in range(n_devices)]
    topo = build_topology([(0.0, 0.0, 1000.0)], devices, np.random.default_rng(0), profiles)
    return SystemModel(topo, availability=Availability(dropout_prob=dropout, seed=1))


def echo_app(node_id: str, flops: float, reply_floats: int) -> NodeApp:
    def handle(msg, ctx):
        ctx.add_work(Work(1, flops))
        return msg.reply("ok", {"w": torch.zeros(reply_floats)})

    return NodeApp(node_id, "device", {"ping": handle})


def rate(distance_m: float, power_w: float) -> float:
    gain = path_gain(distance_m, PathLoss())
    return shannon_rate_bps(1e6, power_w, gain, WIRELESS.noise_psd_w_per_hz)


def test_round_trip_time_matches_hand_computation():
    system = three_nodes()
    apps = {"dev0": echo_app("dev0", flops=2e9, reply_floats=250_000)}
    t = SimulatedTransport(NodeSet(apps, 0), system)
    msg = Message("cloud", "dev0", "ping", 1, {"w": torch.zeros(500_000)})
    reply_msg = Message("dev0", "cloud", "ok", 1, {"w": torch.zeros(250_000)})
    [reply] = t.send([msg])
    assert reply.kind == "ok"
    down = 0.05 + 8 * msg.nbytes() / 8e6 + 8 * msg.nbytes() / rate(100.0, 1.0)
    compute = 2e9 / 1e9
    up_air = 8 * reply_msg.nbytes() / rate(100.0, 0.5)
    up = up_air + 0.05 + 8 * reply_msg.nbytes() / 8e6
    assert t.now() == pytest.approx(down + compute + up, rel=1e-9)
    stats = t.stats()
    assert stats["bytes_down_edge_cloud"] == msg.nbytes()
    assert stats["bytes_down_device_edge"] == msg.nbytes()
    assert stats["bytes_up_device_edge"] == reply_msg.nbytes()
    assert stats["bytes_up_edge_cloud"] == reply_msg.nbytes()
    energy = 2.0 * compute + 1e-9 * 2e9 + 0.5 * up_air
    assert stats["energy_j_device"] == pytest.approx(energy, rel=1e-9)


def test_replies_arrive_in_simulated_order_and_deadline_drops_late_ones():
    system = three_nodes(n_devices=3)
    apps = {
        f"dev{i}": echo_app(f"dev{i}", flops=f, reply_floats=10)
        for i, f in enumerate([3e9, 1e9, 2e9])
    }
    t = SimulatedTransport(NodeSet(apps, 0), system)
    msgs = [Message("cloud", f"dev{i}", "ping", 1) for i in range(3)]
    replies = t.send(msgs)
    assert [r.src for r in replies] == ["dev1", "dev2", "dev0"]
    t2 = SimulatedTransport(NodeSet(apps, 0), system)
    kept = t2.send(msgs, deadline_s=2.5)
    assert [r.src for r in kept] == ["dev1", "dev2"]
    assert t2.now() == pytest.approx(2.5)
    assert t2.stats()["late"] == 1


def test_unavailable_devices_never_answer_and_cost_nothing():
    system = three_nodes(dropout=1.0)
    t = SimulatedTransport(NodeSet({"dev0": echo_app("dev0", 1e9, 10)}, 0), system)
    assert t.send([Message("cloud", "dev0", "ping", 1)]) == []
    assert t.now() == 0.0
    assert t.stats()["dropped"] == 1
    assert t.stats()["bytes_up"] == 0


def test_nested_send_starts_when_the_request_arrives():
    """An edge that coordinates its devices finishes after its own downstream round."""
    system = three_nodes()
    inner_end = []

    def edge_train(msg, ctx):
        ctx.downstream.send([Message("edge0", "dev0", "ping", msg.round)])
        inner_end.append(ctx.downstream.now())
        return msg.reply("done")

    apps = {
        "dev0": echo_app("dev0", 1e9, 10),
        "edge0": NodeApp("edge0", "edge", {"go": edge_train}),
    }
    t = SimulatedTransport(NodeSet(apps, 0), system)
    t.send([Message("cloud", "edge0", "go", 1)])
    wan_down = 0.05 + 8 * Message("cloud", "edge0", "go", 1).nbytes() / 8e6
    assert inner_end[0] > wan_down + 1.0
    assert t.now() > inner_end[0]


def test_submit_and_next_reply_follow_the_clock():
    system = three_nodes(n_devices=2)
    apps = {"dev0": echo_app("dev0", 5e9, 10), "dev1": echo_app("dev1", 1e9, 10)}
    t = SimulatedTransport(NodeSet(apps, 0), system)
    t.submit([Message("cloud", "dev0", "ping", 1), Message("cloud", "dev1", "ping", 1)])
    first = t.next_reply()
    t_first = t.now()
    second = t.next_reply()
    assert (first.src, second.src) == ("dev1", "dev0")
    assert 1.0 < t_first < t.now()
    assert t.next_reply() is None


def test_local_transport_counts_bytes_and_keeps_send_order():
    apps = {f"dev{i}": echo_app(f"dev{i}", 1e9 * (3 - i), 10) for i in range(3)}
    t = LocalTransport(NodeSet(apps, 0), flat_membership({"device": list(apps)}))
    msgs = [Message("cloud", d, "ping", 1) for d in apps]
    replies = t.send(msgs)
    assert [r.src for r in replies] == ["dev0", "dev1", "dev2"]
    expected = sum(m.nbytes() for m in msgs) + sum(r.nbytes() for r in replies)
    assert t.stats()["bytes"] == expected
    assert t.now() == 0.0
    assert math.isclose(t.stats()["messages"], 6)


def test_transmission_latency_counts_the_slowest_model_transfer_per_component():
    """Seed 003 §5 on a cloud-edge-device chain: upload + edge->cloud + cloud->edge."""
    system = three_nodes()

    def train(msg, ctx):
        return msg.reply("update", {"update": Update({"w": torch.zeros(250_000)})})

    app = NodeApp("dev0", "device", {"train": train, "ping": train})
    t = SimulatedTransport(NodeSet({"dev0": app}, 0), system)
    request = Message("cloud", "dev0", "train", 1, {"model": Update({"w": torch.zeros(500_000)})})
    t.send([request])
    reply = Message("dev0", "cloud", "update", 1, {"update": Update({"w": torch.zeros(250_000)})})
    upload = 8 * reply.nbytes() / rate(100.0, 0.5)
    cloud_up = 0.05 + 8 * reply.nbytes() / 8e6
    cloud_down = 0.05 + 8 * request.nbytes() / 8e6
    stats = t.stats()
    assert stats["latency_upload_s"] == pytest.approx(upload, rel=1e-9)
    assert stats["latency_cloud_up_s"] == pytest.approx(cloud_up, rel=1e-9)
    assert stats["latency_cloud_down_s"] == pytest.approx(cloud_down, rel=1e-9)
    assert stats["transmission_latency_s"] == pytest.approx(upload + cloud_up + cloud_down)
    t.send([Message("cloud", "dev0", "ping", 2)])  # a control request: its reply still counts
    later = t.stats()
    assert later["latency_cloud_down_s"] == stats["latency_cloud_down_s"]
    assert later["latency_upload_s"] == pytest.approx(2 * upload, rel=1e-9)


# -- decentralized: peer devices and the SYNC round driver ---------------------------------
D2D = WirelessProfile(bandwidth_hz=2e6, device_tx_power_w=0.3, latency_s=0.002)


def peer_system(d2d: WirelessProfile | None = D2D, dropout: float = 0.0) -> SystemModel:
    """One edge at x=0, devices at 100, 200, 300 m; peers within 150 m of each other."""
    profiles = Profiles(device=DEVICE, device_flops_range=(1e9, 1e9), wan=WAN, wireless=WIRELESS)
    devices = [(100.0, 0.0), (200.0, 0.0), (300.0, 0.0)]
    topo = build_topology([(0.0, 0.0, 1000.0)], devices, np.random.default_rng(0), profiles)
    return SystemModel(
        topo,
        availability=Availability(dropout_prob=dropout, seed=1),
        peers=PeerGraph(mode="radius", radius_m=150.0),
        d2d=d2d,
    )


def d2d_time(nbytes: int, distance_m: float) -> float:
    gain = path_gain(distance_m, PathLoss())
    return 8 * nbytes / shannon_rate_bps(2e6, 0.3, gain, D2D.noise_psd_w_per_hz) + 0.002


def gossip_apps(flops: float = 1e9, slower: dict[str, float] | None = None) -> dict[str, NodeApp]:
    """Each device, when the round starts, trains (``flops``) and sends its model to its peers."""

    def start(msg, ctx):
        ctx.add_work(Work(1, (slower or {}).get(ctx.node_id, flops)))
        peers = ctx.downstream.nodes("device")
        out = [
            Message(
                ctx.node_id, p, "gossip", msg.round, {"model": Update({"w": torch.zeros(1000)})}
            )
            for p in peers
        ]
        ctx.downstream.send(out)
        return msg.reply("done")

    def gossip(msg, ctx):
        return msg.reply("ack")

    return {
        d: NodeApp(d, "device", {"round": start, "gossip": gossip})
        for d in ("dev0", "dev1", "dev2")
    }


def test_visible_nodes_of_a_device_are_its_peers_and_sync_sees_everyone():
    system = peer_system()
    assert visible_nodes(system, "dev1", "device", 0.0) == system.peers("dev1", 0.0)
    assert visible_nodes(system, "dev1", "device", 0.0) == ["dev0", "dev2"]
    assert visible_nodes(system, "dev0", "device", 0.0) == ["dev1"]
    assert visible_nodes(system, "dev0", "edge", 0.0) == ["edge0"]
    assert visible_nodes(system, SYNC, "device", 0.0) == ["dev0", "dev1", "dev2"]
    assert visible_nodes(system, SYNC, "edge", 0.0) == ["edge0"]
    t = SimulatedTransport(NodeSet(gossip_apps(), 0), system, node_id=SYNC)
    assert t.nodes("device") == ["dev0", "dev1", "dev2"]
    assert t.at("dev2", 0.0).nodes("device") == ["dev1"]


def test_sync_trigger_is_free_and_the_peer_traffic_is_charged_direct(monkeypatch):
    system = peer_system()
    seen = []
    transfer, tier = system.transfer, system.tier
    monkeypatch.setattr(
        system, "transfer", lambda s, d, *a: seen.append((s, d)) or transfer(s, d, *a)
    )
    monkeypatch.setattr(system, "tier", lambda n: seen.append((n,)) or tier(n))
    apps = gossip_apps()
    t = SimulatedTransport(NodeSet({"dev0": apps["dev0"], "dev1": apps["dev1"]}, 0), system, SYNC)
    trigger = Message(SYNC, "dev0", "round", 1, {"model": Update({"w": torch.zeros(100_000)})})
    [reply] = t.send([trigger])
    assert reply.kind == "done" and reply.src == "dev0"
    assert not [c for c in seen if SYNC in c]
    assert ("dev0", "dev1") in seen and ("dev1", "dev0") in seen
    gossip = Message("dev0", "dev1", "gossip", 1, {"model": Update({"w": torch.zeros(1000)})})
    ack = Message("dev1", "dev0", "ack", 1)
    stats = t.stats()
    assert stats["bytes_peer_device_device"] == gossip.nbytes() + ack.nbytes()
    assert stats["bytes_up"] == 0 and stats["bytes_down"] == 0  # the trigger cost no bytes
    assert stats["messages"] == 2
    gossip_s, ack_s = d2d_time(gossip.nbytes(), 100.0), d2d_time(ack.nbytes(), 100.0)
    compute_s = 1e9 / 1e9
    assert stats["sim_time_s"] == pytest.approx(compute_s + gossip_s + ack_s, rel=1e-9)
    assert stats["latency_d2d_s"] == pytest.approx(gossip_s, rel=1e-9)  # the ack is no model
    radio_j = 0.3 * (gossip_s - 0.002) + 0.3 * (ack_s - 0.002)
    energy_j = 2.0 * compute_s + 1e-9 * 1e9 + radio_j
    assert stats["energy_j_device"] == pytest.approx(energy_j, rel=1e-9)


def test_sync_round_is_a_barrier_with_deadlines_and_availability():
    system = peer_system()
    apps = gossip_apps(slower={"dev0": 3e9, "dev2": 2e9})
    t = SimulatedTransport(NodeSet(apps, 0), system, SYNC)
    t.advance_to(10.0)
    replies = t.send([Message(SYNC, d, "round", 1) for d in ("dev0", "dev1", "dev2")])
    assert [r.src for r in replies] == ["dev1", "dev2", "dev0"]
    # the barrier: the slowest device (3 s of training, then one gossip exchange) ends the round
    gossip = Message("dev0", "dev1", "gossip", 1, {"model": Update({"w": torch.zeros(1000)})})
    exchange_s = d2d_time(gossip.nbytes(), 100.0) + d2d_time(gossip.reply("ack").nbytes(), 100.0)
    assert t.now() == pytest.approx(10.0 + 3.0 + exchange_s, rel=1e-9)
    late = SimulatedTransport(NodeSet(apps, 0), system, SYNC)
    assert late.send([Message(SYNC, "dev0", "round", 1)], deadline_s=0.5) == []
    assert late.now() == pytest.approx(0.5) and late.stats()["late"] == 1
    gone = SimulatedTransport(NodeSet(apps, 0), peer_system(dropout=1.0), SYNC)
    assert gone.send([Message(SYNC, "dev0", "round", 1)]) == []
    assert gone.stats()["dropped"] == 1 and gone.now() == 0.0


def test_relayed_peer_traffic_is_charged_on_the_edge_tiers():
    system = peer_system(d2d=None)
    t = SimulatedTransport(NodeSet(gossip_apps(flops=0.0), 0), system, SYNC)
    t.send([Message(SYNC, "dev0", "round", 1)])
    gossip = Message("dev0", "dev1", "gossip", 1, {"model": Update({"w": torch.zeros(1000)})})
    ack = Message("dev1", "dev0", "ack", 1)
    stats = t.stats()
    assert "bytes_peer_device_device" not in stats
    assert stats["bytes_up_device_edge"] == gossip.nbytes() + ack.nbytes()
    assert stats["bytes_down_device_edge"] == gossip.nbytes() + ack.nbytes()
    assert stats["latency_d2d_s"] == 0.0
    assert stats["latency_upload_s"] > 0.0

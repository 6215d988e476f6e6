"""The simulated transport charges time, bytes and energy exactly as the system model says."""

import math

import numpy as np
import pytest
import torch

from fedge.core.message import Message
from fedge.core.node import NodeApp
from fedge.core.update import Work
from fedge.runtime import LocalTransport, NodeSet, SimulatedTransport
from fedge.runtime.local import flat_membership
from fedge.system.availability import Availability
from fedge.system.compute import ComputeProfile
from fedge.system.generators import build_topology
from fedge.system.model import SystemModel
from fedge.system.network import LinkProfile, PathLoss, WirelessProfile, path_gain, shannon_rate_bps
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
        return msg.reply("update", {"update": torch.zeros(250_000)})

    app = NodeApp("dev0", "device", {"train": train, "ping": train})
    t = SimulatedTransport(NodeSet({"dev0": app}, 0), system)
    request = Message("cloud", "dev0", "train", 1, {"state": torch.zeros(500_000)})
    t.send([request])
    reply = Message("dev0", "cloud", "update", 1, {"update": torch.zeros(250_000)})
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

"""A RecordingLedger's charges replayed on another ledger give exactly the direct totals.

This is how an edge's round run on a Ray worker is charged on the driver: the oracle is the
same charges made directly, on a ledger that already holds earlier charges (float sums
depend on the order of the additions, so replaying increments must match them bit for bit).
"""

from __future__ import annotations

import copy

import torch

from fedge.core.message import Message
from fedge.core.update import Update
from fedge.experiment.config import load_config
from fedge.experiment.systems import build_system
from fedge.runtime.simulated import Ledger, RecordingLedger, replay


def _charges(ledger: Ledger, system, messages, times) -> None:  # type: ignore[no-untyped-def]
    for message, t_s in zip(messages, times, strict=True):
        cost = system.transfer(message.src, message.dst, message.nbytes(), t_s)
        ledger.charge_transfer(cost, system, message)
        compute = system.compute(message.dst, 1.7e6 * (1 + t_s), message.round)
        ledger.energy.charge(message.dst, system.tier(message.dst), "compute", compute.energy_j)
        ledger.counters["flops"] += 1.7e6 * (1 + t_s)
        ledger.counters["messages"] += 2
    ledger.note_latency("handover", 1, 0.123)


def test_replayed_charges_equal_direct_charges(tiny_config) -> None:
    cfg = load_config(tiny_config, ["system.mobility='highway'"])
    system = build_system(cfg.system, cfg.seed)
    devices, edges = system.ids("device"), system.ids("edge")
    model = Update({"w": torch.arange(300, dtype=torch.float32) / 7})
    down = [Message(edges[0], d, "train", 2, {"model": model}) for d in devices[:4]]
    up = [Message(d, edges[1], "update", 2, {"update": model}) for d in devices[4:8]]
    times = [0.1 * i + 1 / 3 for i in range(8)]

    before = Ledger()  # earlier charges of the run, on the driver
    _charges(before, system, [Message(edges[1], "cloud", "edge_update", 1, {})], [0.7])
    direct = copy.deepcopy(before)
    _charges(direct, system, [*down, *up], times)

    recording = RecordingLedger()
    _charges(recording, system, [*down, *up], times)
    replayed = copy.deepcopy(before)
    replay(replayed, recording.log)

    assert replayed.snapshot() == direct.snapshot()
    assert list(replayed.slowest_s.items()) == list(direct.slowest_s.items())
    assert replayed.energy.by_node() == direct.energy.by_node()
    assert direct.snapshot()["energy_j"] > before.snapshot()["energy_j"] > 0
    assert recording.snapshot()["bytes_up"] == 0  # it records, it does not add up
    kinds = {op for op, _ in recording.log}
    assert kinds == {"count", "energy", "latency"}

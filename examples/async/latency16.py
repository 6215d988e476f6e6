"""The 16-device latency example of NVFlare's edge README, on fedge's simulated clock.

The published setting: 16 devices, each of one of three types drawn uniformly, whose local
training takes a Gaussian time with mean 100, 200 or 400 s; 5 s of communication delay;
synchronous FedAvg over all 16 for 10 rounds waits for the slowest device each round, the
asynchronous scheme applies every update as it arrives (160 model versions, as many
updates as the 10 synchronous rounds). Its closed forms: synchronous 10 × (400 +
(3/2)·π^(−1/2)·4 + 5) = 4084 s ≈ 68 min, asynchronous 10 × ((100 + 200 + 400)/3 + 5) =
2383 s ≈ 39 min (the σ = 4 s of the Gaussians is the one the closed form uses); measured
with real sleeps: 72 and 35 min.

Here the same protocol runs through fedge's own coordinators (``FedAvg``; FedAsync with
``concurrency = 16``) on the simulated transport: the WAN carries the 5 s each way, each
device's training time is drawn per request from its type's Gaussian (seeded per device and
request) and reported as FLOPs of a 1 GFLOP/s device, so the clock turns it into seconds.
The script prints the clock's figures next to the published closed forms and to the same
quantities computed independently (Monte Carlo of max-of-Gaussians for the synchronous
rounds; an event heap of the 16 devices for the asynchronous versions).

    PYTHONPATH=src python examples/async/latency16.py [--sigma 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import heapq
import math

import numpy as np
import torch

from fedge.algorithms import FedAvg
from fedge.algorithms.asynchronous import AsyncFL, AsyncServer, Rule
from fedge.algorithms.selection import make_selector
from fedge.core.message import Message
from fedge.core.node import NodeApp, NodeContext
from fedge.core.update import Update, Work
from fedge.runtime import NodeSet, SimulatedTransport
from fedge.system.availability import Availability
from fedge.system.compute import ComputeProfile
from fedge.system.generators import build_topology
from fedge.system.model import SystemModel
from fedge.system.network import LinkProfile, WirelessProfile
from fedge.system.topology import Profiles

MEANS_S = (100.0, 200.0, 400.0)
DEVICES, ROUNDS = 16, 10
FLOPS = 1e9
DEVICE = ComputeProfile(flops_per_s=FLOPS, memory_bytes=1e9, static_power_w=1.0)


def device_types(seed: int) -> list[float]:
    """The mean training time of each device: one of the three types, drawn uniformly."""
    rng = np.random.default_rng(seed)
    return [MEANS_S[i] for i in rng.integers(0, 3, DEVICES)]


def system(comm_s: float) -> SystemModel:
    """A cloud, one edge and 16 devices beside it; the WAN takes ``comm_s`` each way."""
    wan = LinkProfile(bandwidth_bps=1e12, latency_s=comm_s)
    wireless = WirelessProfile(bandwidth_hz=1e9)
    profiles = Profiles(
        device=DEVICE, device_flops_range=(FLOPS, FLOPS), wan=wan, wireless=wireless
    )
    spots = [(1.0, 0.0)] * DEVICES
    topo = build_topology([(0.0, 0.0, 100.0)], spots, np.random.default_rng(0), profiles)
    return SystemModel(topo, availability=Availability())


def apps(means: list[float], sigma: float) -> dict[str, NodeApp]:
    """Devices whose training takes N(mean, sigma) seconds (at least 0) and send a 1-float
    model back; the time is reported as FLOPs, which the clock divides by 1 GFLOP/s."""

    def trainer(mean: float):
        def train(message: Message, ctx: NodeContext) -> Message:
            seconds = max(0.0, mean + sigma * float(ctx.rng.standard_normal()))
            ctx.add_work(Work(1, seconds * FLOPS))
            state = {"w": message.payload["model"].state["w"] + 1.0}
            return message.reply("update", {"update": Update(state, 1.0, origin=ctx.node_id)})

        return train

    return {
        f"dev{i}": NodeApp(f"dev{i}", "device", {"train": trainer(m)}) for i, m in enumerate(means)
    }


def clock_times(means: list[float], sigma: float, comm_s: float, seed: int) -> tuple[float, float]:
    """Simulated seconds of 10 synchronous rounds and of 160 asynchronous versions."""
    start = {"w": torch.zeros(1)}
    nodes = NodeSet(apps(means, sigma), seed)
    sync = SimulatedTransport(nodes, system(comm_s))
    FedAvg(clients_per_round=DEVICES).run(sync, start, np.random.default_rng(seed), ROUNDS)
    rule = Rule("fedasync", 1, 1.0, "constant", {})
    server = AsyncServer(rule, DEVICES, make_selector("random", {}, DEVICES, None))
    async_t = SimulatedTransport(NodeSet(apps(means, sigma), seed), system(comm_s))
    AsyncFL(server, updates_per_round=DEVICES * ROUNDS).run(
        async_t, start, np.random.default_rng(seed), 1
    )
    return sync.now(), async_t.now()


def independent(means: list[float], sigma: float, comm_s: float, seed: int) -> tuple[float, float]:
    """The same quantities without fedge: E[10 × (max of the 16 Gaussians + 2·comm)] by Monte
    Carlo, and the time of the 160th update of 16 devices that start again as soon as they
    deliver (one event heap, its own Gaussian draws)."""
    rng = np.random.default_rng(seed + 1)
    draws = rng.normal(means, sigma, size=(20_000, DEVICES)).clip(min=0.0)
    sync_s = ROUNDS * (draws.max(axis=1).mean() + 2 * comm_s)

    def trip(i: int) -> float:
        return max(0.0, means[i] + sigma * float(rng.standard_normal())) + 2 * comm_s

    heap = [(trip(i), i) for i in range(DEVICES)]
    heapq.heapify(heap)
    t = 0.0
    for _ in range(DEVICES * ROUNDS):
        t, i = heapq.heappop(heap)
        heapq.heappush(heap, (t + trip(i), i))
    return float(sync_s), t


def published(sigma: float, comm_s: float) -> tuple[float, float]:
    """NVFlare's closed forms (one communication delay per update)."""
    sync_s = ROUNDS * (max(MEANS_S) + 1.5 / math.sqrt(math.pi) * sigma + comm_s)
    async_s = ROUNDS * (sum(MEANS_S) / 3 + comm_s)
    return sync_s, async_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigma", type=float, default=4.0)
    parser.add_argument("--comm", type=float, default=5.0, help="seconds each way")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    means = device_types(args.seed)
    counts = {m: means.count(m) for m in MEANS_S}
    print(f"device types (mean s: count): {counts}")
    rows = [
        ("fedge simulated clock", *clock_times(means, args.sigma, args.comm, args.seed)),
        ("independent arithmetic", *independent(means, args.sigma, args.comm, args.seed)),
        ("NVFlare closed forms", *published(args.sigma, args.comm)),
        ("NVFlare measured (sleeps)", 72 * 60.0, 35 * 60.0),
    ]
    print("| source | synchronous, 10 rounds | asynchronous, 160 versions | ratio |")
    print("|---|---|---|---|")
    for name, sync_s, async_s in rows:
        print(
            f"| {name} | {sync_s:.0f} s ({sync_s / 60:.1f} min) "
            f"| {async_s:.0f} s ({async_s / 60:.1f} min) | {sync_s / async_s:.2f} |"
        )


if __name__ == "__main__":
    main()

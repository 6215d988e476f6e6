"""TMOA (seed 004 §3): where to cut a DNN between an edge pool and the cloud.

Cut ``j`` means the edge runs blocks 1..j and sends block j's output (the feature map) to
the cloud, which runs the rest; ``j = 0`` is cloud-only (the raw input goes up) and
``j = n`` edge-only (nothing goes up). Every task first reaches its nearest edge over the
device uplink, so that hop is the same for every cut.

Constraints, for every cut (SPEC §6):
- C1 memory: Σ_{i<=j} Par_i + Σ_{i<=j} Map_i <= λ0·P0 (bytes; P0 the smallest edge memory);
- C2 latency: T(j) = T_te + T_exec(j) + T_wait(j) + T_ec(j) + T_cp(j) <= T_max, with
  T_exec = Zt_j / F_e, T_wait the M/M/1 waiting time of one edge that receives a/x tasks/s
  or the M/M/N (Erlang C) waiting time of the pool of x edges sharing a tasks/s,
  T_ec = 8·Map_j / min(W_H, L) + WAN latency (0 at j = n), T_cp = (Zt_n − Zt_j) / F_c;
- C3 energy: the average power an edge draws for the task stream,
  (a/x)·(P_static·T_exec + ε·Zt_j + P_tx·8·Map_j / min(W_H, L)) <= E (joules per second).

Interpretations: the paper's waiting time a·Zt/(F(F − a·Zt)) is not dimensionally a time;
we use the textbook M/M/1 / M/M/N formulas with service rate F_e / Zt_j (an unstable
queue, utilisation >= 1, makes C2 fail). The result download and the cloud's own queue are
neglected, as in the paper. The paper maximises j subject to the constraints (objective
``latest``); ``latency`` and ``energy`` pick the feasible cut with the smallest T(j) or
per-task edge energy instead. j is an integer in 0..n, so the solver enumerates every cut,
which is exact; the Lagrangian of the paper is not needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedge.core.errors import ConfigError

QUEUES = ("mm1", "mmn")
OBJECTIVES = ("latest", "latency", "energy")
CONSTRAINTS = ("memory", "latency", "energy")


@dataclass(frozen=True)
class Layer:
    """One cut-able block: forward FLOPs, parameter bytes and output bytes per sample."""

    name: str
    flops: float
    param_bytes: float
    output_bytes: float


@dataclass(frozen=True)
class EdgePool:
    """The edge side and its links; rates in bit/s, FLOP/s, watts, joules per FLOP."""

    nodes: int = 10
    flops: float = 1e11
    memory_bytes: float = 512 * 2**20
    memory_share: float = 0.8
    """λ0: the share of P0 a model may take (the rest is the operating system's)."""
    static_power_w: float = 10.0
    energy_per_flop_j: float = 1e-10
    tx_power_w: float = 1.0
    uplink_bps: float = 50e6
    """Device -> edge rate of a task's raw input."""
    wan_bps: float = 20e6
    """W_H: the edge -> cloud bandwidth."""
    throughput_bps: float = math.inf
    """L: the edge node's own output limit (the link is min(W_H, L))."""
    wan_latency_s: float = 0.02
    cloud_flops: float = 1e13

    def __post_init__(self) -> None:
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int) or self.nodes < 1:
            raise ConfigError("edges", self.nodes, "an integer >= 1")
        for name in ("flops", "memory_bytes", "uplink_bps", "wan_bps", "throughput_bps"):
            _positive(name, getattr(self, name))
        _positive("cloud_flops", self.cloud_flops)
        if not 0 < self.memory_share <= 1:
            raise ConfigError("memory_share", self.memory_share, "a number in (0, 1]")
        for name in ("static_power_w", "energy_per_flop_j", "tx_power_w", "wan_latency_s"):
            if not getattr(self, name) >= 0:
                raise ConfigError(name, getattr(self, name), "a number >= 0")


@dataclass(frozen=True)
class Workload:
    """The task stream and its limits: a tasks/s in all, T_max seconds, E watts per edge."""

    arrival_rate: float = 20.0
    max_latency_s: float = 1.0
    max_power_w: float = 50.0
    input_bytes: float = 3 * 224 * 224 * 4
    queue: str = "mmn"

    def __post_init__(self) -> None:
        _positive("arrival_rate", self.arrival_rate)
        _positive("max_latency_s", self.max_latency_s)
        _positive("max_power_w", self.max_power_w)
        _positive("input_bytes", self.input_bytes)
        if self.queue not in QUEUES:
            raise ConfigError("queue", self.queue, " | ".join(QUEUES))


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and not isinstance(value, bool) and value > 0):
        raise ConfigError(name, value, "a number > 0")


@dataclass(frozen=True)
class CutCosts:
    """Every cut's figures (index j = 0..n) under one pool and workload."""

    memory_bytes: np.ndarray
    latency_s: np.ndarray
    energy_j: np.ndarray
    """Edge energy per task."""
    power_w: np.ndarray
    """Average power an edge draws for the task stream."""
    feasible: dict[str, np.ndarray] = field(default_factory=dict)
    """Per constraint, which cuts satisfy it."""

    def all_feasible(self) -> np.ndarray:
        out = np.ones(len(self.latency_s), dtype=bool)
        for ok in self.feasible.values():
            out &= ok
        return out


@dataclass(frozen=True)
class Choice:
    """The chosen cut, or why none is feasible."""

    cut: int | None
    costs: CutCosts
    objective: str
    failing: tuple[str, ...] = ()
    """When no cut is feasible: the constraints that no cut satisfies on its own, or, when
    each holds somewhere, all three (they exclude each other)."""

    @property
    def feasible(self) -> bool:
        return self.cut is not None


def waiting_time_s(service_s: float, arrival_rate: float, servers: int, queue: str) -> float:
    """Mean M/M/1 (per server, arrivals split evenly) or M/M/N (Erlang C) waiting time.

    ``inf`` when the queue is unstable (utilisation >= 1); 0 for zero service time.
    """
    if service_s <= 0:
        return 0.0
    mu = 1.0 / service_s
    if queue == "mm1":
        lam = arrival_rate / servers
        return math.inf if lam >= mu else lam / (mu * (mu - lam))
    load = arrival_rate / mu
    if load >= servers:
        return math.inf
    # Erlang C via the stable recursion on Erlang B
    erlang_b = 1.0
    for k in range(1, servers + 1):
        erlang_b = load * erlang_b / (k + load * erlang_b)
    rho = load / servers
    erlang_c = erlang_b / (1.0 - rho + rho * erlang_b)
    return erlang_c / (servers * mu - arrival_rate)


def cut_costs(layers: Sequence[Layer], pool: EdgePool, work: Workload) -> CutCosts:
    """Memory, latency, energy and feasibility of every cut 0..n."""
    if not layers:
        raise ConfigError("layers", 0, "a model with at least one block")
    flops = np.concatenate([[0.0], np.cumsum([ly.flops for ly in layers])])
    params = np.concatenate([[0.0], np.cumsum([ly.param_bytes for ly in layers])])
    maps = np.concatenate([[0.0], np.cumsum([ly.output_bytes for ly in layers])])
    sent = np.array([work.input_bytes, *(ly.output_bytes for ly in layers)], dtype=float)
    sent[-1] = 0.0  # edge-only: nothing goes to the cloud
    memory = params + maps
    link_bps = min(pool.wan_bps, pool.throughput_bps)
    exec_s = flops / pool.flops
    wait_s = np.array(
        [waiting_time_s(s, work.arrival_rate, pool.nodes, work.queue) for s in exec_s]
    )
    airtime_s = 8.0 * sent / link_bps
    ec_s = np.where(sent > 0, airtime_s + pool.wan_latency_s, 0.0)
    te_s = 8.0 * work.input_bytes / pool.uplink_bps
    latency = te_s + exec_s + wait_s + ec_s + (flops[-1] - flops) / pool.cloud_flops
    energy = pool.static_power_w * exec_s + pool.energy_per_flop_j * flops
    energy = energy + pool.tx_power_w * airtime_s
    power = work.arrival_rate / pool.nodes * energy
    feasible = {
        "memory": memory <= pool.memory_share * pool.memory_bytes,
        "latency": latency <= work.max_latency_s,
        "energy": power <= work.max_power_w,
    }
    return CutCosts(memory, latency, energy, power, feasible)


def choose_cut(
    layers: Sequence[Layer], pool: EdgePool, work: Workload, objective: str = "latest"
) -> Choice:
    """The best feasible cut by enumeration of all n + 1 cuts (exact)."""
    if objective not in OBJECTIVES:
        raise ConfigError("objective", objective, " | ".join(OBJECTIVES))
    costs = cut_costs(layers, pool, work)
    ok = costs.all_feasible()
    if not ok.any():
        never = tuple(c for c in CONSTRAINTS if not costs.feasible[c].any())
        return Choice(None, costs, objective, never or CONSTRAINTS)
    candidates = np.flatnonzero(ok)
    if objective == "latest":
        return Choice(int(candidates[-1]), costs, objective)
    score = costs.latency_s if objective == "latency" else costs.energy_j
    return Choice(int(candidates[np.argmin(score[candidates])]), costs, objective)


def evaluate_cut(
    layers: Sequence[Layer], pool: EdgePool, work: Workload, j: int
) -> tuple[float, float, float, float]:
    """(memory bytes, latency s, edge energy J per task, edge power W) of cut ``j`` alone,
    written out term by term (the check on ``cut_costs``)."""
    if not 0 <= j <= len(layers):
        raise ConfigError("cut", j, f"an integer in 0..{len(layers)}")
    head, tail = layers[:j], layers[j:]
    memory = sum(ly.param_bytes + ly.output_bytes for ly in head)
    edge_flops = sum(ly.flops for ly in head)
    sent = work.input_bytes if j == 0 else layers[j - 1].output_bytes
    sent = 0.0 if j == len(layers) else sent
    exec_s = edge_flops / pool.flops
    airtime_s = 8 * sent / min(pool.wan_bps, pool.throughput_bps)
    latency = 8 * work.input_bytes / pool.uplink_bps + exec_s
    latency += waiting_time_s(exec_s, work.arrival_rate, pool.nodes, work.queue)
    latency += airtime_s + pool.wan_latency_s if sent else 0.0
    latency += sum(ly.flops for ly in tail) / pool.cloud_flops
    energy = pool.static_power_w * exec_s + pool.energy_per_flop_j * edge_flops
    energy += pool.tx_power_w * airtime_s
    return memory, latency, energy, work.arrival_rate / pool.nodes * energy


def brute_force_cut(
    layers: Sequence[Layer], pool: EdgePool, work: Workload, objective: str = "latest"
) -> int | None:
    """The best cut by evaluating every cut on its own (None when none is feasible)."""
    best: tuple[float, int] | None = None
    for j in range(len(layers) + 1):
        memory, latency, energy, power = evaluate_cut(layers, pool, work, j)
        ok = memory <= pool.memory_share * pool.memory_bytes
        if not (ok and latency <= work.max_latency_s and power <= work.max_power_w):
            continue
        key = {"latest": -j, "latency": latency, "energy": energy}[objective]
        if best is None or key < best[0]:
            best = (key, j)
    return None if best is None else best[1]

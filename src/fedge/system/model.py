"""SystemModel: the one object the simulated transport asks for routes, times and energy."""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedge.core.errors import ConfigError
from fedge.system.availability import Availability
from fedge.system.compute import compute_time_s
from fedge.system.energy import energy_j
from fedge.system.mobility import (
    HandoverEvent,
    Mobility,
    StaticMobility,
    attachment,
    handover_events,
)
from fedge.system.network import (
    LinkProfile,
    WirelessProfile,
    check_number,
    path_gain,
    shannon_rate_bps,
    transfer_time_s,
)
from fedge.system.peers import PeerGraph, d2d_airtime_s
from fedge.system.sharing import Channel, FlowSpec, HopTiming, LinkSharing, share
from fedge.system.topology import Topology

OUT_OF_COVERAGE = ("error", "nearest")
HOP_TIERS = ("device-edge", "edge-edge", "edge-cloud", "device-device")


@dataclass(frozen=True)
class Hop:
    """One link crossing; ``tx_energy_j`` is the radio energy of ``src`` (0 on wired links)."""

    src: str
    dst: str
    tier: str
    direction: str
    nbytes: int
    start_s: float
    time_s: float
    tx_energy_j: float

    @property
    def end_s(self) -> float:
        """When the last byte arrives at ``dst``."""
        return self.start_s + self.time_s


@dataclass(frozen=True)
class TransferCost:
    """Hops in sequence (store and forward: each starts when the previous one ends)."""

    hops: tuple[Hop, ...]
    time_s: float

    @property
    def tx_energy_j(self) -> float:
        """Radio energy of all hops."""
        return sum(h.tx_energy_j for h in self.hops)

    def nbytes_by_tier(self) -> dict[str, int]:
        """Bytes carried per hop tier (a payload crossing two backhaul hops counts twice)."""
        out: dict[str, int] = {}
        for h in self.hops:
            out[h.tier] = out.get(h.tier, 0) + h.nbytes
        return out


@dataclass(frozen=True)
class ComputeCost:
    """Busy time and energy (static + per-FLOP) of a computation on one node."""

    time_s: float
    energy_j: float


class SystemModel:
    """Routes, transfer times, compute costs, attachment and availability over a topology.

    ``out_of_coverage``: ``"error"`` refuses a device outside every coverage disc (ConfigError);
    ``"nearest"`` attaches it to the nearest edge anyway (a cellular fallback whose rate follows
    from the larger distance). Routes are fixed when a transfer starts; each wireless hop uses
    the device's position at the hop's own start time.

    Decentralized learning: ``peers`` is the device peer graph (default ``PeerGraph()``, knn),
    computed from the positions (and attachments) at the asked time; it is computed once when
    the mobility is static. ``d2d=None`` relays device-to-device traffic through the edges
    (device -> edge -> backhaul -> edge -> device); a WirelessProfile makes it one direct radio
    hop (tier ``device-device``, direction ``peer``) at the Shannon rate of the two devices'
    distance, the sender transmitting at ``d2d.device_tx_power_w``.
    """

    def __init__(
        self,
        topology: Topology,
        mobility: Mobility | None = None,
        availability: Availability | None = None,
        out_of_coverage: str = "error",
        *,
        peers: PeerGraph | None = None,
        d2d: WirelessProfile | None = None,
        links: LinkSharing | None = None,
    ) -> None:
        if out_of_coverage not in OUT_OF_COVERAGE:
            raise ConfigError("out_of_coverage", out_of_coverage, " | ".join(OUT_OF_COVERAGE))
        self.topology = topology
        self.mobility: Mobility = mobility if mobility is not None else StaticMobility(topology)
        self.availability = availability if availability is not None else Availability()
        self.out_of_coverage = out_of_coverage
        self._edge_paths: dict[str, dict[str, str | None]] = {}
        self.peer_graph = peers if peers is not None else PeerGraph()
        self.peer_graph.check_links(self.ids("device"))
        self.d2d = d2d
        self._peer_cache: dict[float, dict[str, tuple[str, ...]]] = {}
        self._attach_index: np.ndarray | None = None
        self.links = links if links is not None else LinkSharing(shared=False)
        """How overlapping transfers share links (``transfers``); not shared by default here,
        the experiment config's default (``system.links.shared = true``) turns it on."""

    # -- identity -------------------------------------------------------------------------
    def tier(self, node_id: str) -> str:
        """``cloud``, ``edge`` or ``device`` (ConfigError for an unknown id)."""
        return self.topology.tier(node_id)

    def ids(self, tier: str) -> list[str]:
        """Node ids of a tier in index order."""
        return self.topology.ids(tier)

    def neighbors(self, edge_id: str) -> list[str]:
        """Neighbour edges of ``edge_id`` in the configured / distance graph."""
        self._require(edge_id, "edge")
        return list(self.topology.edge_neighbors[edge_id])

    def _require(self, node_id: str, tier: str) -> None:
        if self.tier(node_id) != tier:
            raise ConfigError(f"{tier} id", node_id, f"an id of the {tier} tier")

    # -- where things are -----------------------------------------------------------------
    def position(self, node_id: str, t_s: float) -> tuple[float, float]:
        """Position at ``t_s``: mobility for devices, fixed for edges and the cloud."""
        if self.tier(node_id) == "device":
            return self.mobility.position(node_id, t_s)
        node = self.topology.node(node_id)
        return node.x_m, node.y_m

    def _attach(self, device_id: str, t_s: float) -> str | None:
        fallback = self.out_of_coverage == "nearest"
        if type(self.mobility) is StaticMobility:
            k = int(self._static_attachments()[self.topology.device_index(device_id)])
            return None if k < 0 else self.topology.edges[k].id
        return attachment(self.topology, self.mobility, device_id, t_s, fallback)

    def _static_attachments(self) -> np.ndarray:
        """Every device's edge index (-1: none) when nobody moves, computed once for the
        population with arrays: the nearest covering edge (ties by index), else the nearest
        edge with ``out_of_coverage = 'nearest'`` (what ``attachment`` gives one device)."""
        if self._attach_index is None:
            xy = self.topology.device_xy_m()
            exy, cov = self.topology.edge_arrays()
            out = np.empty(len(xy), dtype=np.int64)
            for lo in range(0, len(xy), 65536):  # bounded memory: chunks × edges distances
                part = xy[lo : lo + 65536]
                dist = np.hypot(exy[None, :, 0] - part[:, 0:1], exy[None, :, 1] - part[:, 1:2])
                inside = np.where(dist <= cov[None, :], dist, np.inf)
                best = np.argmin(inside, axis=1)
                covered = np.isfinite(inside[np.arange(len(part)), best])
                fallback = np.argmin(dist, axis=1) if self.out_of_coverage == "nearest" else -1
                out[lo : lo + len(part)] = np.where(covered, best, fallback)
            self._attach_index = out
        return self._attach_index

    def attachment(self, device_id: str, t_s: float) -> str:
        """The edge serving ``device_id`` at ``t_s`` (nearest in range, or per the policy)."""
        self._require(device_id, "device")
        edge = self._attach(device_id, t_s)
        if edge is None:
            raise self._uncovered(device_id, t_s)
        return edge

    def _uncovered(self, device_id: str, t_s: float) -> ConfigError:
        x_m, y_m = self.mobility.position(device_id, t_s)
        nearest = self.topology.nearest_edge(x_m, y_m)
        node = self.topology.node(nearest)
        dist_m = math.hypot(node.x_m - x_m, node.y_m - y_m)
        allowed = (
            f"a position within coverage_m of some edge (nearest: {nearest} at {dist_m:.1f} m, "
            f"coverage {node.coverage_m:g} m), or out_of_coverage='nearest'"
        )
        return ConfigError(f"position of {device_id} at t={t_s:g} s", (x_m, y_m), allowed)

    def attached_devices(self, edge_id: str, t_s: float) -> list[str]:
        """Devices served by ``edge_id`` at ``t_s`` (devices out of every coverage are skipped)."""
        self._require(edge_id, "edge")
        if type(self.mobility) is StaticMobility:
            k = self.ids("edge").index(edge_id)
            return [f"dev{i}" for i in np.flatnonzero(self._static_attachments() == k)]
        return [d for d in self.ids("device") if self._attach(d, t_s) == edge_id]

    def validate(self, t_s: float = 0.0) -> None:
        """Check every device can attach at ``t_s``; ConfigError names the first that cannot."""
        if type(self.mobility) is StaticMobility:
            missing = np.flatnonzero(self._static_attachments() < 0)
            if len(missing):
                raise self._uncovered(f"dev{missing[0]}", t_s)
            return
        for device_id in self.ids("device"):
            if self._attach(device_id, t_s) is None:
                raise self._uncovered(device_id, t_s)

    def peers(self, device_id: str, t_s: float) -> list[str]:
        """Neighbour devices of ``device_id`` in the peer graph at ``t_s``."""
        self._require(device_id, "device")
        key = 0.0 if isinstance(self.mobility, StaticMobility) else float(t_s)
        graph = self._peer_cache.get(key)
        if graph is None:
            if len(self._peer_cache) >= 64:
                self._peer_cache.clear()
            graph = self._peer_graph_at(t_s)
            self._peer_cache[key] = graph
        return list(graph[device_id])

    def _peer_graph_at(self, t_s: float) -> dict[str, tuple[str, ...]]:
        devices = self.ids("device")
        positions = {d: self.mobility.position(d, t_s) for d in devices}
        attached: dict[str, str] | None = None
        if self.peer_graph.mode == "edge":
            attached = {d: e for d in devices if (e := self._attach(d, t_s)) is not None}
        return self.peer_graph.neighbours(positions, attached)

    def handovers(self, t0_s: float, t1_s: float, step_s: float = 0.5) -> list[HandoverEvent]:
        """Attachment changes of every device in (t0_s, t1_s], sorted by time."""
        fallback = self.out_of_coverage == "nearest"
        devices = self.ids("device")
        return handover_events(self.topology, self.mobility, devices, t0_s, t1_s, step_s, fallback)

    # -- routing and transfers ------------------------------------------------------------
    def route(self, src: str, dst: str, t_s: float) -> list[tuple[str, str]]:
        """Hops from ``src`` to ``dst`` with attachments taken at ``t_s``.

        Devices reach anything through their attached edge (another device too, unless
        ``d2d`` is set: then one direct hop); edge to edge goes direct between neighbours,
        else along the fewest backhaul hops, else (disconnected graph) via the cloud.
        """
        if self.tier(src) and self.tier(dst) and src == dst:
            return []
        if self.d2d is not None and self.tier(src) == self.tier(dst) == "device":
            return [(src, dst)]
        head: list[str] = []
        tail: list[str] = []
        a, b = src, dst
        if self.tier(src) == "device":
            head, a = [src], self.attachment(src, t_s)
        if self.tier(dst) == "device":
            tail, b = [dst], self.attachment(dst, t_s)
        path = head + self._infra_path(a, b) + tail
        return list(itertools.pairwise(path))

    def _infra_path(self, a: str, b: str) -> list[str]:
        """Node path between two infrastructure nodes (edges / cloud), ends included."""
        if a == b:
            return [a]
        if "cloud" in (self.tier(a), self.tier(b)):
            return [a, b]
        parents = self._edge_paths.get(a)
        if parents is None:
            parents = self._bfs(a)
            self._edge_paths[a] = parents
        if b not in parents:
            return [a, self.topology.cloud.id, b]
        path = [b]
        while (parent := parents[path[-1]]) is not None:
            path.append(parent)
        return path[::-1]

    def _bfs(self, source: str) -> dict[str, str | None]:
        parents: dict[str, str | None] = {source: None}
        queue = deque([source])
        while queue:
            node = queue.popleft()
            for peer in self.topology.edge_neighbors[node]:
                if peer not in parents:
                    parents[peer] = node
                    queue.append(peer)
        return parents

    def transfer(self, src: str, dst: str, nbytes: int, t_s: float) -> TransferCost:
        """Time and radio energy to move ``nbytes`` from ``src`` to ``dst`` starting at ``t_s``."""
        check_number("nbytes", nbytes)
        hops: list[Hop] = []
        start_s = t_s
        for a, b in self.route(src, dst, t_s):
            hop = self._hop(a, b, int(nbytes), start_s)
            hops.append(hop)
            start_s = hop.end_s
        return TransferCost(tuple(hops), start_s - t_s)

    def transfers(self, batch: Sequence[tuple[str, str, int, float]]) -> list[TransferCost]:
        """The costs of transfers (src, dst, nbytes, start) that may overlap in time: with
        ``links.shared`` they share the capacity of the links they cross (``sharing.py``),
        else each is ``transfer`` alone. Routes are fixed at each transfer's start."""
        if not self.links.shared:
            return [self.transfer(*item) for item in batch]
        for _, _, nbytes, _ in batch:
            check_number("nbytes", nbytes)
        specs = [
            FlowSpec(tuple(self.route(src, dst, t_s)), int(n), t_s) for src, dst, n, t_s in batch
        ]
        timings = share(specs, self._channel, self.links)
        return [self._cost(s, t) for s, t in zip(specs, timings, strict=True)]

    def _cost(self, spec: FlowSpec, timings: list[HopTiming]) -> TransferCost:
        hops = []
        for (a, b), t in zip(spec.hops, timings, strict=True):
            tier, direction, power_w = self._kind(a, b)
            hops.append(
                Hop(
                    a,
                    b,
                    tier,
                    direction,
                    spec.nbytes,
                    t.start_s,
                    t.end_s - t.start_s,
                    power_w * t.airtime_s,
                )
            )
        end_s = timings[-1].end_s if timings else spec.start_s
        return TransferCost(tuple(hops), end_s - spec.start_s)

    def _kind(self, a: str, b: str) -> tuple[str, str, float]:
        """(tier, direction, sender's radio power in W; 0 on wired links) of hop a -> b."""
        tier_a, tier_b = self.tier(a), self.tier(b)
        if tier_a == tier_b == "device":
            assert self.d2d is not None
            return "device-device", "peer", self.d2d.device_tx_power_w
        wireless = self.topology.wireless
        if tier_a == "device":
            return "device-edge", "up", wireless.device_tx_power_w
        if tier_b == "device":
            return "device-edge", "down", wireless.edge_tx_power_w
        if tier_a == tier_b == "edge":
            return "edge-edge", "peer", 0.0
        return "edge-cloud", "up" if tier_b == "cloud" else "down", 0.0

    def _channel(self, a: str, b: str, start_s: float) -> Channel:
        """The resource hop a -> b shares, its full rate and latency when it starts at
        ``start_s``: a cell's uplink / downlink, the WAN per direction, a backhaul link per
        direction; a direct device-to-device hop is not shared."""
        tier, direction, _ = self._kind(a, b)
        if tier == "device-device":
            assert self.d2d is not None
            (xa_m, ya_m), (xb_m, yb_m) = self.position(a, start_s), self.position(b, start_s)
            gain = path_gain(math.hypot(xa_m - xb_m, ya_m - yb_m), self.d2d.path_loss)
            rate = shannon_rate_bps(
                self.d2d.bandwidth_hz,
                self.d2d.device_tx_power_w,
                gain,
                self.d2d.noise_psd_w_per_hz,
            )
            return Channel(None, rate, self.d2d.latency_s)
        if tier == "device-edge":
            device_id, edge_id = (a, b) if direction == "up" else (b, a)
            x_m, y_m = self.mobility.position(device_id, start_s)
            edge = self.topology.node(edge_id)
            wireless = self.topology.wireless
            rate = wireless.rate_bps(math.hypot(edge.x_m - x_m, edge.y_m - y_m), direction == "up")
            return Channel(("cell", edge_id, direction), rate, wireless.latency_s)
        link = self.topology.backhaul if tier == "edge-edge" else self.topology.wan
        key = ("backhaul", a, b) if tier == "edge-edge" else ("wan", direction)
        return Channel(key, link.bandwidth_bps, link.latency_at(start_s))

    def _hop(self, a: str, b: str, nbytes: int, start_s: float) -> Hop:
        tier_a, tier_b = self.tier(a), self.tier(b)
        if tier_a == tier_b == "device":
            return self._d2d_hop(a, b, nbytes, start_s)
        if "device" in (tier_a, tier_b):
            return self._wireless_hop(a, b, nbytes, start_s, uplink=tier_a == "device")
        link: LinkProfile
        if tier_a == tier_b == "edge":
            link, tier, direction = self.topology.backhaul, "edge-edge", "peer"
        else:
            link, tier = self.topology.wan, "edge-cloud"
            direction = "up" if tier_b == "cloud" else "down"
        time_s = transfer_time_s(nbytes, link.bandwidth_bps, link.latency_at(start_s))
        return Hop(a, b, tier, direction, nbytes, start_s, time_s, 0.0)

    def _wireless_hop(self, a: str, b: str, nbytes: int, start_s: float, uplink: bool) -> Hop:
        device_id, edge_id = (a, b) if uplink else (b, a)
        x_m, y_m = self.mobility.position(device_id, start_s)
        edge = self.topology.node(edge_id)
        wireless = self.topology.wireless
        rate_bps = wireless.rate_bps(math.hypot(edge.x_m - x_m, edge.y_m - y_m), uplink)
        airtime_s = transfer_time_s(nbytes, rate_bps)
        power_w = wireless.device_tx_power_w if uplink else wireless.edge_tx_power_w
        time_s = airtime_s + wireless.latency_s
        direction = "up" if uplink else "down"
        return Hop(a, b, "device-edge", direction, nbytes, start_s, time_s, power_w * airtime_s)

    def _d2d_hop(self, a: str, b: str, nbytes: int, start_s: float) -> Hop:
        assert self.d2d is not None
        (xa_m, ya_m), (xb_m, yb_m) = self.position(a, start_s), self.position(b, start_s)
        airtime_s = d2d_airtime_s(self.d2d, math.hypot(xa_m - xb_m, ya_m - yb_m), nbytes)
        time_s = airtime_s + self.d2d.latency_s
        radio_j = self.d2d.device_tx_power_w * airtime_s
        return Hop(a, b, "device-device", "peer", nbytes, start_s, time_s, radio_j)

    # -- compute and availability ---------------------------------------------------------
    def compute(self, node_id: str, flops: float, round_index: int | None = None) -> ComputeCost:
        """Time = FLOPs / FLOP/s (× straggler slowdown when ``round_index`` is given);
        energy = static power × time + energy per FLOP × FLOPs."""
        profile = self.topology.node(node_id).compute
        time_s = compute_time_s(flops, profile)
        if round_index is not None and self.tier(node_id) == "device":
            time_s *= self.availability.slowdown(node_id, round_index)
        return ComputeCost(time_s, energy_j(profile, busy_s=time_s, flops=flops))

    def fits_memory(self, node_id: str, nbytes: float) -> bool:
        """True if ``nbytes`` fit in the node's memory."""
        return nbytes <= self.topology.node(node_id).compute.memory_bytes

    def is_available(self, node_id: str, round_index: int) -> bool:
        """Devices follow the Availability model; the cloud and edges are always up."""
        if self.tier(node_id) != "device":
            return True
        return self.availability.is_available(node_id, round_index)

"""Topology: one cloud, edges with coverage and a neighbour graph, devices, and their links.

Node ids are fixed: ``cloud``, ``edge0``..``edge{E-1}``, ``dev0``..``dev{D-1}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np

from fedge.core.errors import ConfigError
from fedge.system.compute import GIB, ComputeProfile
from fedge.system.network import LinkProfile, WirelessProfile, check_number

TIERS = ("cloud", "edge", "device")
DEVICE_PROFILE = ComputeProfile(3e9, 2 * GIB, 1.0, 1e-10)
EDGE_PROFILE = ComputeProfile(1e12, 16 * GIB, 50.0, 2e-11)
CLOUD_PROFILE = ComputeProfile(1e14, 512 * GIB, 300.0, 1e-11)
WAN_PROFILE = LinkProfile(100e6, 0.05)
BACKHAUL_PROFILE = LinkProfile(1e9, 0.005)


@dataclass(frozen=True)
class Node:
    """A node at (x_m, y_m). ``coverage_m`` is an edge's radio range; 0 for other tiers."""

    id: str
    tier: str
    x_m: float
    y_m: float
    coverage_m: float
    compute: ComputeProfile

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ConfigError(f"{self.id}.tier", self.tier, " | ".join(TIERS))
        check_number(f"{self.id}.x_m", self.x_m, minimum=-math.inf)
        check_number(f"{self.id}.y_m", self.y_m, minimum=-math.inf)
        check_number(f"{self.id}.coverage_m", self.coverage_m, strict=self.tier == "edge")


class DeviceTable(Sequence[Node]):
    """A population of devices held as arrays: positions (N×2, m) and FLOP/s (N), the
    other compute fields shared (``profile``). ``table[i]`` makes device i's ``Node`` when
    asked, so a million devices cost 24 MB instead of a million objects; ids are
    ``dev<i>`` in index order."""

    def __init__(self, xy_m: np.ndarray, flops_per_s: np.ndarray, profile: ComputeProfile) -> None:
        xy = np.asarray(xy_m, dtype=float).reshape(-1, 2)
        flops = np.asarray(flops_per_s, dtype=float)
        if flops.shape != (len(xy),):
            raise ConfigError(
                "devices.flops_per_s", flops.shape, f"one value per device ({len(xy)})"
            )
        if not np.isfinite(xy).all():
            bad = int(np.flatnonzero(~np.isfinite(xy).all(axis=1))[0])
            raise ConfigError(f"dev{bad}.x_m", tuple(xy[bad]), "finite coordinates")
        if not (np.isfinite(flops) & (flops > 0)).all():
            bad = int(np.flatnonzero(~(np.isfinite(flops) & (flops > 0)))[0])
            raise ConfigError(f"dev{bad}.flops_per_s", float(flops[bad]), "a finite number > 0")
        xy.flags.writeable = False
        flops.flags.writeable = False
        self.xy_m, self.flops_per_s, self.profile = xy, flops, profile
        self._ids: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.flops_per_s)

    @overload
    def __getitem__(self, i: int) -> Node: ...

    @overload
    def __getitem__(self, i: slice) -> list[Node]: ...

    def __getitem__(self, i: int | slice) -> Node | list[Node]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        k = range(len(self))[i]
        p = self.profile
        compute = ComputeProfile(
            float(self.flops_per_s[k]), p.memory_bytes, p.static_power_w, p.energy_per_flop_j
        )
        x_m, y_m = self.xy_m[k]
        return Node(f"dev{k}", "device", float(x_m), float(y_m), 0.0, compute)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DeviceTable):
            return (
                self.profile == other.profile
                and np.array_equal(self.xy_m, other.xy_m)
                and np.array_equal(self.flops_per_s, other.flops_per_s)
            )
        if isinstance(other, tuple | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def ids(self) -> list[str]:
        """``dev0``..``dev<N-1>`` (made once)."""
        if self._ids is None:
            self._ids = tuple(f"dev{k}" for k in range(len(self)))
        return list(self._ids)


@dataclass(frozen=True)
class Profiles:
    """Default hardware and links used by the generators (illustrative, order-of-magnitude).

    Device FLOP/s are drawn log-uniformly in ``device_flops_range``; the other device fields
    come from ``device``. Edge: a small GPU server; cloud: a data-centre node.
    """

    device: ComputeProfile = DEVICE_PROFILE
    device_flops_range: tuple[float, float] = (1e9, 1e10)
    edge: ComputeProfile = EDGE_PROFILE
    cloud: ComputeProfile = CLOUD_PROFILE
    wan: LinkProfile = WAN_PROFILE
    backhaul: LinkProfile = BACKHAUL_PROFILE
    wireless: WirelessProfile = field(default_factory=WirelessProfile)

    def __post_init__(self) -> None:
        lo, hi = self.device_flops_range
        check_number("Profiles.device_flops_range[0]", lo, strict=True)
        check_number("Profiles.device_flops_range[1]", hi, minimum=lo)

    def draw_device_flops(self, n_devices: int, rng: np.random.Generator) -> list[float]:
        """``n_devices`` FLOP/s values drawn log-uniformly in ``device_flops_range``."""
        lo, hi = self.device_flops_range
        logs = rng.uniform(math.log(lo), math.log(hi), size=n_devices)
        return [float(min(max(math.exp(v), lo), hi)) for v in logs]


@dataclass(frozen=True)
class Topology:
    """The static world: nodes, edge neighbour graph and link profiles per tier."""

    cloud: Node
    edges: tuple[Node, ...]
    devices: tuple[Node, ...] | DeviceTable
    edge_neighbors: Mapping[str, tuple[str, ...]]
    wan: LinkProfile
    backhaul: LinkProfile
    wireless: WirelessProfile
    _index: dict[str, Node] = field(init=False, repr=False, compare=False)
    _edge_xy_m: np.ndarray = field(init=False, repr=False, compare=False)
    _edge_cov_m: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "edges", tuple(self.edges))
        if not isinstance(self.devices, DeviceTable):
            object.__setattr__(self, "devices", tuple(self.devices))
        self._check_nodes()
        neighbors = {e.id: tuple(self.edge_neighbors.get(e.id, ())) for e in self.edges}
        self._check_neighbors(neighbors)
        object.__setattr__(self, "edge_neighbors", neighbors)
        listed = () if isinstance(self.devices, DeviceTable) else self.devices
        nodes = (self.cloud, *self.edges, *listed)
        object.__setattr__(self, "_index", {n.id: n for n in nodes})
        xy = np.array([[e.x_m, e.y_m] for e in self.edges], dtype=float).reshape(-1, 2)
        object.__setattr__(self, "_edge_xy_m", xy)
        cov = np.array([e.coverage_m for e in self.edges], dtype=float)
        object.__setattr__(self, "_edge_cov_m", cov)

    def _check_nodes(self) -> None:
        if not self.edges:
            raise ConfigError("edges", 0, "at least one edge")
        expected = [("cloud", "cloud", self.cloud)]
        expected += [(f"edge{i}", "edge", n) for i, n in enumerate(self.edges)]
        if not isinstance(self.devices, DeviceTable):  # a table's ids are right by making
            expected += [(f"dev{i}", "device", n) for i, n in enumerate(self.devices)]
        for node_id, tier, node in expected:
            if node.id != node_id or node.tier != tier:
                raise ConfigError(
                    f"{node_id}", (node.id, node.tier), f"id {node_id!r}, tier {tier}"
                )

    def _check_neighbors(self, neighbors: Mapping[str, tuple[str, ...]]) -> None:
        edge_ids = set(neighbors)
        for key in self.edge_neighbors:
            if key not in edge_ids:
                raise ConfigError("edge_neighbors", key, "edge ids: " + ", ".join(neighbors))
        for edge_id, peers in neighbors.items():
            for peer in peers:
                if peer not in edge_ids or peer == edge_id:
                    allowed = "other edge ids: " + ", ".join(sorted(edge_ids - {edge_id}))
                    raise ConfigError(f"edge_neighbors[{edge_id}]", peer, allowed)

    def node(self, node_id: str) -> Node:
        """The node with this id (ConfigError listing the id ranges if unknown)."""
        try:
            return self._index[node_id]
        except KeyError:
            if isinstance(self.devices, DeviceTable) and self.is_device(node_id):
                return self.devices[int(node_id[3:])]
            allowed = f"cloud, edge0..edge{len(self.edges) - 1}, dev0..dev{len(self.devices) - 1}"
            raise ConfigError("node_id", node_id, allowed) from None

    def device_index(self, device_id: str) -> int:
        """The index of device ``dev<i>`` (ConfigError if there is no such device)."""
        if not self.is_device(device_id):
            raise ConfigError("device_id", device_id, f"dev0..dev{len(self.devices) - 1}")
        return int(device_id[3:])

    def is_device(self, node_id: str) -> bool:
        """Whether ``node_id`` names a device of this topology (ids are ``dev<i>`` in index
        order), found without a lookup table."""
        digits = node_id[3:]
        return (
            node_id.startswith("dev")
            and digits.isdigit()
            and str(int(digits)) == digits
            and int(digits) < len(self.devices)
        )

    def tier(self, node_id: str) -> str:
        """``cloud``, ``edge`` or ``device``."""
        node = self._index.get(node_id)
        if node is None and self.is_device(node_id):
            return "device"
        return node.tier if node is not None else self.node(node_id).tier

    def ids(self, tier: str) -> list[str]:
        """Ids of the nodes of ``tier``, in index order."""
        if tier == "cloud":
            return [self.cloud.id]
        if tier == "edge":
            return [e.id for e in self.edges]
        if tier == "device":
            if isinstance(self.devices, DeviceTable):
                return self.devices.ids()
            return [d.id for d in self.devices]
        raise ConfigError("tier", tier, " | ".join(TIERS))

    def device_xy_m(self) -> np.ndarray:
        """The devices' positions (N×2, m) in index order."""
        if isinstance(self.devices, DeviceTable):
            return self.devices.xy_m.copy()
        return np.array([[d.x_m, d.y_m] for d in self.devices], dtype=float).reshape(-1, 2)

    def edge_distances_m(self, x_m: float, y_m: float) -> np.ndarray:
        """Distance from (x_m, y_m) to every edge, in edge index order."""
        return np.asarray(
            np.hypot(self._edge_xy_m[:, 0] - x_m, self._edge_xy_m[:, 1] - y_m), dtype=float
        )

    def covering_edges(self, x_m: float, y_m: float) -> list[str]:
        """Edges whose coverage disc contains (x_m, y_m), nearest first (ties by index)."""
        dist = self.edge_distances_m(x_m, y_m)
        inside = np.flatnonzero(dist <= self._edge_cov_m)
        order = inside[np.argsort(dist[inside], kind="stable")]
        return [self.edges[int(i)].id for i in order]

    def nearest_edge(self, x_m: float, y_m: float) -> str:
        """The nearest edge regardless of coverage (ties by index)."""
        return self.edges[int(np.argmin(self.edge_distances_m(x_m, y_m)))].id

    def edge_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(E×2 positions in m, E coverage radii in m), copies for vectorised callers."""
        return self._edge_xy_m.copy(), self._edge_cov_m.copy()

    def distance_m(self, a: str, b: str) -> float:
        """Euclidean distance between the static positions of two nodes."""
        na, nb = self.node(a), self.node(b)
        return math.hypot(na.x_m - nb.x_m, na.y_m - nb.y_m)


def neighbors_by_distance(
    edges: tuple[Node, ...], radius_m: float | None
) -> dict[str, tuple[str, ...]]:
    """Edges within ``radius_m`` of each other are neighbours.

    ``radius_m=None`` means "coverage discs overlap or touch": d <= r_i + r_j.
    """
    out: dict[str, tuple[str, ...]] = {}
    for a in edges:
        peers = []
        for b in edges:
            d_m = math.hypot(a.x_m - b.x_m, a.y_m - b.y_m)
            limit_m = a.coverage_m + b.coverage_m if radius_m is None else radius_m
            if b.id != a.id and d_m <= limit_m:
                peers.append(b.id)
        out[a.id] = tuple(peers)
    return out


def symmetrize(
    neighbors: Mapping[str, tuple[str, ...]], edge_ids: list[str]
) -> dict[str, tuple[str, ...]]:
    """Make a configured neighbour graph undirected, neighbours listed in edge index order."""
    order = {e: i for i, e in enumerate(edge_ids)}
    sets: dict[str, set[str]] = {e: set() for e in edge_ids}
    for a, peers in neighbors.items():
        for b in peers:
            if a not in sets or b not in sets or a == b:
                raise ConfigError(f"neighbors of {a}", b, "other edge ids: " + ", ".join(edge_ids))
            sets[a].add(b)
            sets[b].add(a)
    return {e: tuple(sorted(sets[e], key=order.__getitem__)) for e in edge_ids}

"""Serving requests at the edges, and what each one costs.

Each request goes to the edge its user is attached to at the request's time. Outcomes, in
the order they are tried: a **direct hit** (the edge holds the item); a **soft hit** (the
edge recommends the most similar item it holds among the request's candidates, see
``fedge.caching.similarity``, and the user accepts); a **neighbour** fetch (with
``neighbour_fetch``, a neighbour edge holds the item: it comes over the backhaul); a
**cloud** fetch (over the WAN). Both fetches are misses of the edge, which then offers the
item to its policy (``admit``); a soft hit fetches nothing and admits nothing.

System cost of a request (seed 001: similarity + delay + cache-miss cost):
``w_similarity · (1 - s)`` for a soft hit of similarity s, plus ``w_delay · delay_s``, plus
``w_miss`` for a miss. The delay is the system model's transfer time of ``item_bytes``:
edge -> device (wireless, at the device's position then) for a hit, preceded by neighbour
edge -> edge (backhaul) or cloud -> edge (WAN) for a miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedge.caching.policies import Cache
from fedge.caching.similarity import Neighbours, acceptance
from fedge.system.mobility import StaticMobility
from fedge.system.model import SystemModel

DIRECT, SOFT, NEIGHBOUR, CLOUD = 0, 1, 2, 3
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class Requests:
    """The trace as the edges see it: per request its time, device index, edge index and
    item."""

    time_s: FloatArray
    device: IntArray
    edge: IntArray
    item: IntArray

    def __len__(self) -> int:
        return int(self.item.shape[0])


@dataclass
class Outcomes:
    """Per request: ``kind`` (DIRECT, SOFT, NEIGHBOUR, CLOUD), the substitute's
    ``similarity`` (soft hits; 1 for a direct hit, 0 otherwise), the neighbour edge that
    served a NEIGHBOUR fetch (``source``, -1 otherwise) and the item a soft hit served
    (``substitute``, -1 otherwise)."""

    kind: NDArray[np.int8]
    similarity: FloatArray
    source: IntArray
    substitute: IntArray

    @staticmethod
    def empty(n: int) -> Outcomes:
        return Outcomes(
            np.full(n, CLOUD, dtype=np.int8),
            np.zeros(n),
            np.full(n, -1, dtype=np.int64),
            np.full(n, -1, dtype=np.int64),
        )


@dataclass(frozen=True)
class SoftModel:
    """Candidates per item and the user's uniform draws (one per request) that decide
    acceptance: accepted when draw < exp(-decay · (1 - s))."""

    neighbours: Neighbours
    decay: float
    draws: FloatArray


def attach_edges(system: SystemModel, device: IntArray, time_s: FloatArray) -> IntArray:
    """Edge index of each request: the device's attachment at the request's time. Mobile
    devices follow the system model's handovers, so from a handover's instant on a device
    requests from its new edge."""
    devices, edges = system.ids("device"), system.ids("edge")
    index = {e: j for j, e in enumerate(edges)}
    start = np.array([index[system.attachment(d, 0.0)] for d in devices], dtype=np.int64)
    out: IntArray = start[device]
    if not len(time_s) or isinstance(system.mobility, StaticMobility):
        return out
    changes: dict[int, list[tuple[float, int]]] = {}
    dev_index = {d: j for j, d in enumerate(devices)}
    for ev in system.handovers(0.0, float(time_s[-1]) + 1e-9):
        if ev.to_edge is None:
            system.attachment(ev.device, ev.time_s)  # raises, naming the uncovered device
        changes.setdefault(dev_index[ev.device], []).append((ev.time_s, index[str(ev.to_edge)]))
    for d, seq in changes.items():
        mine = np.flatnonzero(device == d)
        times = np.array([t for t, _ in seq])
        after = np.array([start[d]] + [e for _, e in seq], dtype=np.int64)
        out[mine] = after[np.searchsorted(times, time_s[mine], side="right")]
    return out


def serve(
    req: Requests,
    caches: Sequence[Cache],
    out: Outcomes,
    span: tuple[int, int],
    soft: SoftModel | None = None,
    edge_neighbours: Sequence[Sequence[int]] | None = None,
) -> None:
    """Serve requests ``span[0]:span[1]`` in time order, filling ``out`` (see the module
    docstring). The loop keeps its results in Python lists and writes them back at the end."""
    lo, hi = span
    items = req.item[lo:hi].tolist()
    edges = req.edge[lo:hi].tolist()
    kind = [CLOUD] * (hi - lo)
    sim = [0.0] * (hi - lo)
    source = [-1] * (hi - lo)
    sub = [-1] * (hi - lo)
    cand: list[list[int]] = []
    accept: list[list[float]] = []
    sims: list[list[float]] = []
    draws: list[float] = []
    if soft is not None:
        cand = soft.neighbours.items.tolist()
        sims = soft.neighbours.sims.tolist()
        accept = acceptance(soft.neighbours.sims, soft.decay).tolist()
        draws = soft.draws[lo:hi].tolist()
    lookups = [c.lookup for c in caches]
    admits = [c.admit for c in caches]
    for off, (i, e) in enumerate(zip(items, edges, strict=True)):
        k = lo + off
        if lookups[e](i, k):
            kind[off] = DIRECT
            sim[off] = 1.0
            continue
        c = caches[e]
        if draws:
            col = _soft_hit(c, cand[i], accept[i], draws[off])
            if col is not None:
                kind[off] = SOFT
                sim[off] = sims[i][col]
                sub[off] = cand[i][col]
                continue
        if edge_neighbours is not None:
            for n in edge_neighbours[e]:
                if i in caches[n]:
                    kind[off] = NEIGHBOUR
                    source[off] = n
                    break
        admits[e](i, k)
    out.kind[lo:hi] = kind
    out.similarity[lo:hi] = sim
    out.source[lo:hi] = source
    out.substitute[lo:hi] = sub


def _soft_hit(cache: Cache, cand: list[int], accept: list[float], draw: float) -> int | None:
    """Column of the accepted substitute: the most similar cached candidate, if the user
    accepts it (None: no cached candidate, or declined)."""
    for col, j in enumerate(cand):
        if j < 0:
            return None
        if j in cache:
            return col if draw < accept[col] else None
    return None


@dataclass(frozen=True)
class CostWeights:
    """Weights of the three parts of the system cost."""

    similarity: float = 1.0
    delay: float = 1.0
    miss: float = 1.0


@dataclass(frozen=True)
class Delivery:
    """Per request: delay (s), backhaul bytes (edge-edge hops) and WAN bytes (edge-cloud)."""

    delay_s: FloatArray
    backhaul_bytes: FloatArray
    wan_bytes: FloatArray


def deliver(system: SystemModel, req: Requests, out: Outcomes, item_bytes: int) -> Delivery:
    """Transfer time and bytes of every request from where it was served (own edge,
    neighbour edge or cloud) to its device, by the system model. Requests that share source,
    device and (when anything moves or a latency trace is set) time are priced once."""
    edges, devices = system.ids("edge"), system.ids("device")
    n = len(req)
    src = np.where(
        out.kind == CLOUD, len(edges), np.where(out.kind == NEIGHBOUR, out.source, req.edge)
    )
    fixed = (
        isinstance(system.mobility, StaticMobility)
        and system.topology.wan.trace is None
        and system.topology.backhaul.trace is None
    )
    key = src * len(devices) + req.device
    if not fixed:
        key = np.arange(n)
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    names = [*edges, system.topology.cloud.id]
    delay, bh, wan = np.zeros(len(uniq)), np.zeros(len(uniq)), np.zeros(len(uniq))
    for u, k in enumerate(first.tolist()):
        cost = system.transfer(
            names[src[k]], devices[req.device[k]], item_bytes, float(req.time_s[k])
        )
        tiers = cost.nbytes_by_tier()
        delay[u] = cost.time_s
        bh[u] = tiers.get("edge-edge", 0)
        wan[u] = tiers.get("edge-cloud", 0)
    return Delivery(delay[inverse], bh[inverse], wan[inverse])


def system_cost(out: Outcomes, delivery: Delivery, weights: CostWeights) -> FloatArray:
    """Per request: w_similarity·(1 - s)·[soft] + w_delay·delay + w_miss·[miss]."""
    soft = out.kind == SOFT
    miss = out.kind >= NEIGHBOUR
    cost: FloatArray = (
        weights.similarity * np.where(soft, 1.0 - out.similarity, 0.0)
        + weights.delay * delivery.delay_s
        + weights.miss * miss
    )
    return cost

"""Mobility: where a device is at time t, which edge it is attached to, and handover events."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from fedge.core.errors import ConfigError
from fedge.system.network import check_number
from fedge.system.topology import Topology
from fedge.system.traces import TraceMobility, load_fcd

__all__ = [
    "HandoverEvent",
    "HighwayMobility",
    "Mobility",
    "StaticMobility",
    "TraceMobility",
    "VectorMobility",
    "attachment",
    "handover_events",
    "load_fcd",
]


class Mobility(Protocol):
    """Anything that gives a device's position (x_m, y_m) at simulated time t_s."""

    def position(self, device_id: str, t_s: float) -> tuple[float, float]: ...


@runtime_checkable
class VectorMobility(Protocol):
    """A mobility model that can also give many positions at once (T×2 array), for speed."""

    def position(self, device_id: str, t_s: float) -> tuple[float, float]: ...

    def positions(self, device_id: str, times_s: np.ndarray) -> np.ndarray: ...


class _DeviceIndex(Mapping[str, int]):
    """Device id -> index, read from the id (``dev<i>``) instead of a table of them all."""

    def __init__(self, topology: Topology) -> None:
        self._topology = topology

    def __getitem__(self, device_id: str) -> int:
        if not self._topology.is_device(device_id):
            raise KeyError(device_id)
        return int(device_id[3:])

    def __len__(self) -> int:
        return len(self._topology.devices)

    def __iter__(self) -> Iterator[str]:
        return iter(self._topology.ids("device"))


def _device_index(topology: Topology) -> Mapping[str, int]:
    return _DeviceIndex(topology)


def _lookup(index: Mapping[str, int], device_id: str) -> int:
    try:
        return index[device_id]
    except KeyError:
        raise ConfigError(
            "device_id", device_id, f"a device id dev0..dev{len(index) - 1}"
        ) from None


class StaticMobility:
    """Devices stay where the topology puts them."""

    def __init__(self, topology: Topology) -> None:
        self._index = _device_index(topology)
        self._xy_m = topology.device_xy_m()

    def position(self, device_id: str, t_s: float) -> tuple[float, float]:
        """The device's fixed position."""
        x_m, y_m = self._xy_m[_lookup(self._index, device_id)]
        return float(x_m), float(y_m)

    def positions(self, device_id: str, times_s: np.ndarray) -> np.ndarray:
        """The fixed position repeated for every time."""
        row = self._xy_m[_lookup(self._index, device_id)]
        return np.tile(row, (len(np.atleast_1d(times_s)), 1))


def road_extent_m(topology: Topology) -> tuple[float, float]:
    """(start_m, length_m) of the road that the RSUs line: half a spacing beyond each end RSU.

    With one RSU the road is its coverage diameter.
    """
    xs = sorted(e.x_m for e in topology.edges)
    n = len(xs)
    gap_m = (xs[-1] - xs[0]) / (n - 1) if n > 1 else 2.0 * topology.edges[0].coverage_m
    if gap_m <= 0:
        raise ConfigError("edges x_m", xs, "RSUs spread along the x axis (a highway)")
    return xs[0] - gap_m / 2.0, xs[-1] - xs[0] + gap_m


class HighwayMobility:
    """Vehicles drive along x at a constant speed drawn uniformly in ``speed_range_mps``.

    The road is a ring: it spans [road_start_m, road_start_m + road_length_m) (default: the
    span of the RSUs plus half a spacing at each end, as built by ``highway``) and a vehicle
    leaving one end re-enters at the other, so the density of vehicles stays constant. With
    ``both_directions`` each vehicle's direction is drawn at random (+x or -x); y never changes.
    Positions at t = 0 are the topology's.
    """

    def __init__(
        self,
        topology: Topology,
        rng: np.random.Generator,
        speed_range_mps: tuple[float, float] = (20.0, 33.0),
        road_length_m: float | None = None,
        both_directions: bool = True,
        road_start_m: float | None = None,
    ) -> None:
        lo, hi = speed_range_mps
        check_number("speed_range_mps[0]", lo)
        check_number("speed_range_mps[1]", hi, minimum=lo)
        start_m, length_m = road_extent_m(topology)
        self.road_start_m = start_m if road_start_m is None else road_start_m
        self.road_length_m = length_m if road_length_m is None else road_length_m
        check_number("road_start_m", self.road_start_m, minimum=-math.inf)
        check_number("road_length_m", self.road_length_m, strict=True)
        n = len(topology.devices)
        self._index = _device_index(topology)
        self._xy0_m = topology.device_xy_m()
        self.speeds_mps = rng.uniform(lo, hi, size=n)
        signs = np.where(rng.random(n) < 0.5, -1.0, 1.0) if both_directions else np.ones(n)
        self.directions = signs

    def velocity_mps(self, device_id: str) -> float:
        """Signed speed along x (negative: driving towards -x)."""
        i = _lookup(self._index, device_id)
        return float(self.directions[i] * self.speeds_mps[i])

    def positions(self, device_id: str, times_s: np.ndarray) -> np.ndarray:
        """Positions (T×2) at many times."""
        i = _lookup(self._index, device_id)
        t_s = np.atleast_1d(np.asarray(times_s, dtype=float))
        x0_m, y0_m = self._xy0_m[i]
        travelled_m = x0_m - self.road_start_m + self.directions[i] * self.speeds_mps[i] * t_s
        x_m = self.road_start_m + np.mod(travelled_m, self.road_length_m)
        return np.column_stack([x_m, np.full_like(x_m, y0_m)])

    def position(self, device_id: str, t_s: float) -> tuple[float, float]:
        """Position at ``t_s``."""
        x_m, y_m = self.positions(device_id, np.array([t_s]))[0]
        return float(x_m), float(y_m)


@dataclass(frozen=True)
class HandoverEvent:
    """``device`` leaves ``from_edge`` for ``to_edge`` at ``time_s`` (None: out of coverage)."""

    time_s: float
    device: str
    from_edge: str | None
    to_edge: str | None


def attachment(
    topology: Topology,
    mobility: Mobility,
    device_id: str,
    t_s: float,
    fallback_nearest: bool = False,
) -> str | None:
    """The nearest in-range edge at ``t_s``; out of range: the nearest edge or None."""
    x_m, y_m = mobility.position(device_id, t_s)
    covering = topology.covering_edges(x_m, y_m)
    if covering:
        return covering[0]
    return topology.nearest_edge(x_m, y_m) if fallback_nearest else None


def _attachment_series(
    topology: Topology, mobility: Mobility, device_id: str, times_s: np.ndarray, fallback: bool
) -> list[str | None]:
    if not isinstance(mobility, VectorMobility):
        return [attachment(topology, mobility, device_id, float(t), fallback) for t in times_s]
    xy_m = mobility.positions(device_id, times_s)
    edge_xy_m, cov_m = topology.edge_arrays()
    dist_m = np.hypot(
        xy_m[:, None, 0] - edge_xy_m[None, :, 0], xy_m[:, None, 1] - edge_xy_m[None, :, 1]
    )
    inside = dist_m <= cov_m[None, :]
    best = np.argmin(np.where(inside, dist_m, np.inf), axis=1)
    nearest = np.argmin(dist_m, axis=1)
    ids = [e.id for e in topology.edges]
    out: list[str | None] = []
    for k in range(len(times_s)):
        if inside[k].any():
            out.append(ids[int(best[k])])
        else:
            out.append(ids[int(nearest[k])] if fallback else None)
    return out


def handover_events(
    topology: Topology,
    mobility: Mobility,
    device_ids: Sequence[str],
    t0_s: float,
    t1_s: float,
    step_s: float = 0.5,
    fallback_nearest: bool = False,
    tolerance_s: float = 1e-6,
) -> list[HandoverEvent]:
    """Attachment changes in (t0_s, t1_s], sorted by time (ties by device order).

    Attachment is sampled every ``step_s``; each change is located by bisection to within
    ``tolerance_s`` (the reported time is the first instant known to be attached to the new
    edge). Cells crossed entirely within one step can be missed: keep step_s small enough.
    """
    check_number("step_s", step_s, strict=True)
    check_number("t1_s", t1_s, minimum=t0_s)
    times_s = np.arange(t0_s, t1_s, step_s, dtype=float)
    times_s = np.append(times_s[times_s < t1_s], t1_s)
    events: list[tuple[float, int, HandoverEvent]] = []
    for order, dev in enumerate(device_ids):
        series = _attachment_series(topology, mobility, dev, times_s, fallback_nearest)
        for k in range(1, len(times_s)):
            if series[k] != series[k - 1]:
                span = (float(times_s[k - 1]), float(times_s[k]))
                ends = (series[k - 1], series[k])
                for ev in _refine(
                    topology, mobility, dev, span, ends, fallback_nearest, tolerance_s
                ):
                    events.append((ev.time_s, order, ev))
    events.sort(key=lambda item: (item[0], item[1]))
    return [ev for _, _, ev in events]


def _refine(
    topology: Topology,
    mobility: Mobility,
    device_id: str,
    span_s: tuple[float, float],
    ends: tuple[str | None, str | None],
    fallback: bool,
    tolerance_s: float,
) -> list[HandoverEvent]:
    """Bisect the changes of attachment inside one sampling step."""
    t_lo, t_hi = span_s
    current, final = ends
    out: list[HandoverEvent] = []
    while current != final and len(out) < 8:
        lo, hi = t_lo, t_hi
        for _ in range(64):
            if hi - lo <= tolerance_s:
                break
            mid = 0.5 * (lo + hi)
            if attachment(topology, mobility, device_id, mid, fallback) == current:
                lo = mid
            else:
                hi = mid
        new = attachment(topology, mobility, device_id, hi, fallback)
        if new == current:
            break
        out.append(HandoverEvent(hi, device_id, current, new))
        current, t_lo = new, hi
    return out

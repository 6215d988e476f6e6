"""Trace-driven mobility: recorded positions, e.g. SUMO FCD exports, linearly interpolated."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fedge.core.errors import ConfigError


class TraceMobility:
    """Positions from samples (t_s, x_m, y_m) per device, linearly interpolated in time.

    Before its first sample a device stays at its first position, after its last sample at
    its last one (a vehicle that has not entered yet or has left the network is parked).
    """

    def __init__(
        self,
        traces: Mapping[str, Sequence[tuple[float, float, float]]],
        source_ids: Mapping[str, str] | None = None,
    ) -> None:
        self._t_s: dict[str, np.ndarray] = {}
        self._x_m: dict[str, np.ndarray] = {}
        self._y_m: dict[str, np.ndarray] = {}
        for dev, samples in traces.items():
            arr = np.asarray(samples, dtype=float).reshape(-1, 3)
            if len(arr) == 0 or not np.isfinite(arr).all():
                raise ConfigError(
                    f"traces[{dev}]", list(samples)[:3], "finite (t_s, x_m, y_m) samples"
                )
            arr = arr[np.argsort(arr[:, 0], kind="stable")]
            if np.any(np.diff(arr[:, 0]) <= 0):
                raise ConfigError(f"traces[{dev}] times", arr[:, 0].tolist()[:5], "distinct times")
            self._t_s[dev], self._x_m[dev], self._y_m[dev] = arr[:, 0], arr[:, 1], arr[:, 2]
        self.source_ids: dict[str, str] = dict(source_ids or {d: d for d in traces})

    @property
    def device_ids(self) -> list[str]:
        """Devices with a trace, in insertion order."""
        return list(self._t_s)

    def time_range_s(self, device_id: str) -> tuple[float, float]:
        """First and last sample time of a device."""
        t_s = self._times(device_id)
        return float(t_s[0]), float(t_s[-1])

    def _times(self, device_id: str) -> np.ndarray:
        try:
            return self._t_s[device_id]
        except KeyError:
            raise ConfigError(
                "device_id", device_id, f"one of the {len(self._t_s)} traced devices"
            ) from None

    def positions(self, device_id: str, times_s: np.ndarray) -> np.ndarray:
        """Interpolated positions (T×2) at many times."""
        t_s = self._times(device_id)
        query = np.atleast_1d(np.asarray(times_s, dtype=float))
        x_m = np.interp(query, t_s, self._x_m[device_id])
        y_m = np.interp(query, t_s, self._y_m[device_id])
        return np.column_stack([x_m, y_m])

    def position(self, device_id: str, t_s: float) -> tuple[float, float]:
        """Interpolated position at ``t_s``."""
        x_m, y_m = self.positions(device_id, np.array([t_s]))[0]
        return float(x_m), float(y_m)

    def positions_at(self, t_s: float) -> dict[str, tuple[float, float]]:
        """Every device's position at ``t_s`` (e.g. to place topology devices at t = 0)."""
        return {dev: self.position(dev, t_s) for dev in self._t_s}


def load_fcd(
    path: str | Path,
    rename: bool = True,
    max_devices: int | None = None,
    time_offset_s: float | None = None,
) -> TraceMobility:
    """Read a SUMO FCD export (``<fcd-export><timestep time=..><vehicle id x y/>``).

    With ``rename`` vehicle ids become ``dev0``, ``dev1``, ... in order of first appearance
    (``source_ids`` maps them back); otherwise SUMO's ids are kept. ``max_devices`` keeps only
    the first vehicles to appear. Times are shifted by ``-time_offset_s`` (default: the first
    timestep, so the trace starts at t = 0). Persons and other elements are ignored. To build
    a matching topology, place devices at ``positions_at(0.0)`` (same order: dev0, dev1, ...).
    """
    samples: dict[str, list[tuple[float, float, float]]] = {}
    try:
        for _, elem in ET.iterparse(str(path), events=("end",)):
            if elem.tag == "timestep":
                _read_timestep(elem, samples, max_devices)
                elem.clear()
    except (ET.ParseError, OSError) as exc:
        raise ConfigError("fcd file", str(path), f"a readable SUMO FCD XML file ({exc})") from None
    if not samples:
        raise ConfigError("fcd file", str(path), "at least one <vehicle> inside a <timestep>")
    offset_s = time_offset_s
    if offset_s is None:
        offset_s = min(s[0][0] for s in samples.values())
    traces: dict[str, list[tuple[float, float, float]]] = {}
    source: dict[str, str] = {}
    for k, (vid, rows) in enumerate(samples.items()):
        dev = f"dev{k}" if rename else vid
        traces[dev] = [(t - offset_s, x, y) for t, x, y in rows]
        source[dev] = vid
    return TraceMobility(traces, source_ids=source)


def _read_timestep(
    elem: ET.Element,
    samples: dict[str, list[tuple[float, float, float]]],
    max_devices: int | None,
) -> None:
    t_s = _attr_float(elem, "time", "timestep")
    for veh in elem.iter("vehicle"):
        vid = veh.get("id")
        if vid is None:
            raise ConfigError(f"vehicle at time {t_s}", veh.attrib, "an id attribute")
        if vid not in samples:
            if max_devices is not None and len(samples) >= max_devices:
                continue
            samples[vid] = []
        x_m = _attr_float(veh, "x", f"vehicle {vid}")
        y_m = _attr_float(veh, "y", f"vehicle {vid}")
        samples[vid].append((t_s, x_m, y_m))


def _attr_float(elem: ET.Element, name: str, where: str) -> float:
    raw = elem.get(name)
    try:
        value = float(raw) if raw is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"{where} attribute {name}", raw, "a finite number")
    return value

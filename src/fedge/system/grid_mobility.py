"""Manhattan mobility on the street grid of ``grid_city``: drive, turn at random, never stop."""

from __future__ import annotations

import bisect
import math

import numpy as np

from fedge.core.errors import ConfigError
from fedge.system.network import check_number
from fedge.system.topology import Topology

Cell = tuple[int, int]


class GridMobility:
    """Vehicles follow streets at a constant speed; at each intersection they pick a random
    adjacent street other than the one they came from (a U-turn only at a dead end).

    A device starts at its topology position snapped to the nearest street, heading to one of
    that segment's ends at random. Each device has its own random stream (seeded from ``rng``
    at construction), so positions do not depend on the order of queries. For t < 0 the start
    position is returned.
    """

    def __init__(
        self,
        topology: Topology,
        rng: np.random.Generator,
        n_rows: int,
        n_cols: int,
        block_m: float = 500.0,
        speed_range_mps: tuple[float, float] = (8.0, 14.0),
    ) -> None:
        if n_rows < 1 or n_cols < 1 or n_rows * n_cols < 2:
            raise ConfigError("n_rows, n_cols", (n_rows, n_cols), "a grid of >= 2 intersections")
        check_number("block_m", block_m, strict=True)
        lo, hi = speed_range_mps
        check_number("speed_range_mps[0]", lo, strict=True)
        check_number("speed_range_mps[1]", hi, minimum=lo)
        self.n_rows, self.n_cols, self.block_m = n_rows, n_cols, block_m
        self._index = {d.id: i for i, d in enumerate(topology.devices)}
        n = len(topology.devices)
        self.speeds_mps = rng.uniform(lo, hi, size=n)
        seeds = rng.integers(0, 2**63 - 1, size=n)
        self._rngs = [np.random.default_rng(int(s)) for s in seeds]
        self._t_s: list[list[float]] = []
        self._xy_m: list[list[tuple[float, float]]] = []
        self._prev: list[Cell] = []
        self._next: list[Cell] = []
        for i, dev in enumerate(topology.devices):
            start, prev, nxt = self._start(dev.x_m, dev.y_m, self._rngs[i])
            self._t_s.append([0.0])
            self._xy_m.append([start])
            self._prev.append(prev)
            self._next.append(nxt)

    def _xy(self, cell: Cell) -> tuple[float, float]:
        return cell[1] * self.block_m, cell[0] * self.block_m

    def _neighbors(self, cell: Cell) -> list[Cell]:
        r, c = cell
        steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
        cand = [(r + dr, c + dc) for dr, dc in steps]
        return [(a, b) for a, b in cand if 0 <= a < self.n_rows and 0 <= b < self.n_cols]

    def _start(
        self, x_m: float, y_m: float, rng: np.random.Generator
    ) -> tuple[tuple[float, float], Cell, Cell]:
        """Snap to the nearest street; return (start point, segment end behind, end ahead)."""
        b = self.block_m
        xc = min(max(x_m, 0.0), (self.n_cols - 1) * b)
        yc = min(max(y_m, 0.0), (self.n_rows - 1) * b)
        row = min(max(round(y_m / b), 0), self.n_rows - 1)
        col = min(max(round(x_m / b), 0), self.n_cols - 1)
        on_row = math.hypot(xc - x_m, row * b - y_m) <= math.hypot(col * b - x_m, yc - y_m)
        if on_row and self.n_cols > 1:
            c0 = min(int(xc // b), self.n_cols - 2)
            ends: tuple[Cell, Cell] = ((row, c0), (row, c0 + 1))
            point = (xc, row * b)
        elif self.n_rows > 1:
            r0 = min(int(yc // b), self.n_rows - 2)
            ends = ((r0, col), (r0 + 1, col))
            point = (col * b, yc)
        else:
            c0 = min(int(xc // b), self.n_cols - 2)
            ends, point = ((row, c0), (row, c0 + 1)), (xc, row * b)
        k = int(rng.integers(0, 2))
        return point, ends[1 - k], ends[k]

    def _extend(self, i: int, until_s: float) -> None:
        """Append intersections to device i's route until it covers ``until_s``."""
        if not math.isfinite(until_s):
            raise ConfigError("t_s", until_s, "a finite time")
        times, pts = self._t_s[i], self._xy_m[i]
        speed = float(self.speeds_mps[i])
        while times[-1] < until_s:
            target = self._xy(self._next[i])
            dist_m = math.hypot(target[0] - pts[-1][0], target[1] - pts[-1][1])
            if dist_m > 0:
                times.append(times[-1] + dist_m / speed)
                pts.append(target)
            options = [c for c in self._neighbors(self._next[i]) if c != self._prev[i]]
            options = options or [self._prev[i]]
            choice = options[int(self._rngs[i].integers(0, len(options)))]
            self._prev[i], self._next[i] = self._next[i], choice

    def _device(self, device_id: str) -> int:
        try:
            return self._index[device_id]
        except KeyError:
            n = len(self._index)
            raise ConfigError("device_id", device_id, f"a device id dev0..dev{n - 1}") from None

    def positions(self, device_id: str, times_s: np.ndarray) -> np.ndarray:
        """Positions (T×2) at many times."""
        i = self._device(device_id)
        query = np.atleast_1d(np.asarray(times_s, dtype=float))
        if query.size:
            self._extend(i, float(query.max()))
        t_s = np.asarray(self._t_s[i])
        xy = np.asarray(self._xy_m[i])
        return np.column_stack([np.interp(query, t_s, xy[:, 0]), np.interp(query, t_s, xy[:, 1])])

    def position(self, device_id: str, t_s: float) -> tuple[float, float]:
        """Position at ``t_s``."""
        i = self._device(device_id)
        self._extend(i, t_s)
        times, pts = self._t_s[i], self._xy_m[i]
        k = bisect.bisect_right(times, t_s) - 1
        if k < 0:
            return pts[0]
        if k >= len(times) - 1:
            return pts[-1]
        frac = (t_s - times[k]) / (times[k + 1] - times[k])
        (x0, y0), (x1, y1) = pts[k], pts[k + 1]
        return x0 + frac * (x1 - x0), y0 + frac * (y1 - y0)

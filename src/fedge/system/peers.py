"""The device peer graph of decentralized learning, and the direct device-to-device radio."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedge.core.errors import ConfigError
from fedge.system.network import WirelessProfile, path_gain, shannon_rate_bps, transfer_time_s

PEER_GRAPHS = ("knn", "radius", "complete", "edge", "configured")


def _allowed_ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids) if len(ids) <= 8 else f"{', '.join(ids[:4])}, ..., {ids[-1]}"
    return f"pairs of two different device ids ({shown})"


@dataclass(frozen=True)
class PeerGraph:
    """Who a device may talk to when there is no server; always undirected, no self loops.

    ``knn``: each device links to its ``k`` nearest devices (ties by device index); the graph
    is symmetrised by union, so a device can have more than ``k`` neighbours but never fewer
    (when there are more than ``k`` devices). ``radius``: devices at most ``radius_m`` apart.
    ``complete``: everyone. ``edge``: devices attached to the same edge (a device out of every
    coverage has no peers). ``configured``: the device-id pairs in ``links``.
    Neighbour lists follow device index order (the order of the positions given).
    """

    mode: str = "knn"
    k: int = 4
    radius_m: float = 200.0
    links: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in PEER_GRAPHS:
            raise ConfigError("system.peers.graph", self.mode, " | ".join(PEER_GRAPHS))
        if isinstance(self.k, bool) or not isinstance(self.k, numbers.Integral) or self.k < 1:
            raise ConfigError("system.peers.k", self.k, "an integer >= 1")
        ok = isinstance(self.radius_m, numbers.Real) and not isinstance(self.radius_m, bool)
        if not ok or not math.isfinite(self.radius_m) or self.radius_m <= 0:
            raise ConfigError("system.peers.radius_m", self.radius_m, "a finite number > 0")
        links = tuple(tuple(pair) for pair in self.links)
        for i, pair in enumerate(links):
            if len(pair) != 2 or pair[0] == pair[1] or not all(isinstance(p, str) for p in pair):
                raise ConfigError(f"system.peers.links[{i}]", pair, "pairs of two different ids")
        object.__setattr__(self, "links", links)

    def check_links(self, device_ids: Sequence[str]) -> None:
        """ConfigError naming the first configured pair with an id not in ``device_ids``."""
        known = set(device_ids)
        for i, pair in enumerate(self.links):
            if not set(pair) <= known:
                raise ConfigError(f"system.peers.links[{i}]", pair, _allowed_ids(device_ids))

    def neighbours(
        self,
        positions: Mapping[str, tuple[float, float]],
        attachment: Mapping[str, str] | None = None,
    ) -> dict[str, tuple[str, ...]]:
        """Each device's neighbours; ``attachment`` (device -> edge) is needed for ``edge``."""
        ids = list(positions)
        n = len(ids)
        adjacency = np.zeros((n, n), dtype=bool)
        if self.mode == "configured":
            self.check_links(ids)
            index = {d: i for i, d in enumerate(ids)}
            for a, b in self.links:
                adjacency[index[a], index[b]] = True
        elif self.mode == "edge":
            if attachment is None:
                raise ConfigError("attachment", None, "device -> edge ids for peer graph 'edge'")
            codes: dict[str | None, int] = {None: -1}
            edge = np.array([codes.setdefault(attachment.get(d), len(codes)) for d in ids], int)
            adjacency = (edge[:, None] == edge[None, :]) & (edge[:, None] >= 0)
        elif self.mode == "complete":
            adjacency[:] = True
        else:
            adjacency = self._by_distance(np.array([positions[d] for d in ids], dtype=float))
        adjacency |= adjacency.T
        np.fill_diagonal(adjacency, False)
        return {d: tuple(ids[j] for j in np.flatnonzero(adjacency[i])) for i, d in enumerate(ids)}

    def _by_distance(self, xy_m: np.ndarray) -> np.ndarray:
        xy_m = xy_m.reshape(-1, 2)
        dist_m = np.hypot(xy_m[:, None, 0] - xy_m[None, :, 0], xy_m[:, None, 1] - xy_m[None, :, 1])
        if self.mode == "radius":
            return np.asarray(dist_m <= self.radius_m)
        n = len(xy_m)
        np.fill_diagonal(dist_m, np.inf)
        nearest = np.argsort(dist_m, axis=1, kind="stable")[:, : min(self.k, max(n - 1, 0))]
        adjacency = np.zeros((n, n), dtype=bool)
        adjacency[np.repeat(np.arange(n), nearest.shape[1]), nearest.ravel()] = True
        return adjacency


def d2d_airtime_s(profile: WirelessProfile, distance_m: float, nbytes: int) -> float:
    """Airtime of a direct device-to-device transfer: Shannon rate at the devices' distance
    with the sender at ``profile.device_tx_power_w`` (no access latency included)."""
    gain = path_gain(distance_m, profile.path_loss)
    power_w = profile.device_tx_power_w
    rate_bps = shannon_rate_bps(profile.bandwidth_hz, power_w, gain, profile.noise_psd_w_per_hz)
    return transfer_time_s(nbytes, rate_bps)

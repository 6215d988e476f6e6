"""Built-in topology generators: highway, random geometric, grid city.

All are reproducible from the numpy Generator passed in; device FLOP/s are heterogeneous
(log-uniform in ``Profiles.device_flops_range``). The cloud sits at the origin: its position
does not matter since it is reached over the wired WAN only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedge.core.errors import ConfigError
from fedge.system.network import check_number
from fedge.system.topology import (
    DeviceTable,
    Node,
    Profiles,
    Topology,
    neighbors_by_distance,
    symmetrize,
)


def check_count(name: str, value: int, minimum: int) -> None:
    """Raise ConfigError unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(name, value, f"an integer >= {minimum}")


def build_topology(
    edges: Sequence[tuple[float, float, float]],
    devices_xy_m: Sequence[tuple[float, float]] | np.ndarray,
    rng: np.random.Generator,
    profiles: Profiles,
    neighbors: Mapping[str, tuple[str, ...]] | None = None,
    neighbor_radius_m: float | None = None,
) -> Topology:
    """Assemble a Topology from edge (x_m, y_m, coverage_m) and device (x_m, y_m) positions.

    ``neighbors`` (made undirected) wins over ``neighbor_radius_m``; see neighbors_by_distance.
    """
    cloud = Node("cloud", "cloud", 0.0, 0.0, 0.0, profiles.cloud)
    edge_nodes = tuple(
        Node(f"edge{i}", "edge", float(x), float(y), float(c), profiles.edge)
        for i, (x, y, c) in enumerate(edges)
    )
    flops = profiles.draw_device_flops(len(devices_xy_m), rng)
    dev_nodes = DeviceTable(np.asarray(devices_xy_m, dtype=float), np.array(flops), profiles.device)
    if neighbors is None:
        graph = neighbors_by_distance(edge_nodes, neighbor_radius_m)
    else:
        graph = symmetrize(neighbors, [e.id for e in edge_nodes])
    return Topology(
        cloud, edge_nodes, dev_nodes, graph, profiles.wan, profiles.backhaul, profiles.wireless
    )


def highway(
    n_edges: int,
    n_devices: int,
    rng: np.random.Generator,
    spacing_m: float = 1000.0,
    coverage_m: float = 600.0,
    lanes: int = 4,
    lane_width_m: float = 3.5,
    profiles: Profiles | None = None,
) -> Topology:
    """A straight road along y = 0 from x = 0 to x = n_edges·spacing_m with an RSU every spacing.

    RSU i sits at x = (i + 0.5)·spacing_m, so each owns one spacing-long road segment and the
    road closes into a ring for HighwayMobility. Devices are placed uniformly along the road on
    one of ``lanes`` lane centres (y = (k - (lanes-1)/2)·lane_width_m). Neighbours: adjacent RSUs.
    With coverage_m < spacing_m / 2 some devices may fall outside every coverage.
    """
    check_count("n_edges", n_edges, 1)
    check_count("n_devices", n_devices, 0)
    check_count("lanes", lanes, 1)
    check_number("spacing_m", spacing_m, strict=True)
    check_number("coverage_m", coverage_m, strict=True)
    check_number("lane_width_m", lane_width_m)
    profiles = profiles or Profiles()
    edges = [((i + 0.5) * spacing_m, 0.0, coverage_m) for i in range(n_edges)]
    xs = rng.uniform(0.0, n_edges * spacing_m, size=n_devices)
    lane_idx = rng.integers(0, lanes, size=n_devices)
    ys = (lane_idx - (lanes - 1) / 2.0) * lane_width_m
    adjacent = {f"edge{i}": (f"edge{i + 1}",) for i in range(n_edges - 1)}
    return build_topology(edges, np.column_stack((xs, ys)), rng, profiles, neighbors=adjacent)


def random_geometric(
    n_edges: int,
    n_devices: int,
    rng: np.random.Generator,
    area_m: float = 2000.0,
    coverage_m: float = 500.0,
    neighbor_radius_m: float | None = None,
    profiles: Profiles | None = None,
) -> Topology:
    """Edges uniform in an area_m × area_m square; each device uniform in a random edge's disc.

    Neighbours: edges within ``neighbor_radius_m`` (default: discs that overlap, d <= 2·coverage).
    """
    check_count("n_edges", n_edges, 1)
    check_count("n_devices", n_devices, 0)
    check_number("area_m", area_m, strict=True)
    check_number("coverage_m", coverage_m, strict=True)
    if neighbor_radius_m is not None:
        check_number("neighbor_radius_m", neighbor_radius_m)
    profiles = profiles or Profiles()
    exy = rng.uniform(0.0, area_m, size=(n_edges, 2))
    edges = [(float(x), float(y), coverage_m) for x, y in exy]
    owner = rng.integers(0, n_edges, size=n_devices)
    radius = coverage_m * np.sqrt(rng.uniform(0.0, 1.0, size=n_devices)) * (1.0 - 1e-9)
    angle = rng.uniform(0.0, 2.0 * math.pi, size=n_devices)
    dx, dy = exy[owner, 0] + radius * np.cos(angle), exy[owner, 1] + radius * np.sin(angle)
    devices = list(zip(dx.tolist(), dy.tolist(), strict=True))
    return build_topology(edges, devices, rng, profiles, neighbor_radius_m=neighbor_radius_m)


def grid_city(
    n_rows: int,
    n_cols: int,
    n_devices: int,
    rng: np.random.Generator,
    block_m: float = 500.0,
    coverage_m: float | None = None,
    profiles: Profiles | None = None,
) -> Topology:
    """A Manhattan grid: an edge at every intersection (x = c·block_m, y = r·block_m).

    Edge index = r·n_cols + c. Devices are uniform on the streets (a random street segment,
    a uniform point on it). Coverage defaults to 0.75·block_m, so every street point is covered.
    Neighbours: the 4 adjacent intersections.
    """
    check_count("n_rows", n_rows, 1)
    check_count("n_cols", n_cols, 1)
    check_count("n_devices", n_devices, 0)
    if n_rows * n_cols < 2:
        raise ConfigError("n_rows * n_cols", n_rows * n_cols, "at least 2 intersections")
    check_number("block_m", block_m, strict=True)
    cov_m = 0.75 * block_m if coverage_m is None else coverage_m
    check_number("coverage_m", cov_m, strict=True)
    profiles = profiles or Profiles()
    edges = [(c * block_m, r * block_m, cov_m) for r in range(n_rows) for c in range(n_cols)]
    segments = grid_segments(n_rows, n_cols)
    seg = rng.integers(0, len(segments), size=n_devices)
    frac = rng.uniform(0.0, 1.0, size=n_devices)
    devices = []
    for s, f in zip(seg.tolist(), frac.tolist(), strict=True):
        (r0, c0), (r1, c1) = segments[s]
        devices.append(((c0 + f * (c1 - c0)) * block_m, (r0 + f * (r1 - r0)) * block_m))
    return build_topology(edges, devices, rng, profiles, neighbors=_grid_neighbors(n_rows, n_cols))


def grid_segments(n_rows: int, n_cols: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Street segments between adjacent intersections, as ((row, col), (row, col)) pairs."""
    out = []
    for r in range(n_rows):
        for c in range(n_cols):
            if c + 1 < n_cols:
                out.append(((r, c), (r, c + 1)))
            if r + 1 < n_rows:
                out.append(((r, c), (r + 1, c)))
    return out


def _grid_neighbors(n_rows: int, n_cols: int) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for (r0, c0), (r1, c1) in grid_segments(n_rows, n_cols):
        key = f"edge{r0 * n_cols + c0}"
        out[key] = (*out.get(key, ()), f"edge{r1 * n_cols + c1}")
    return out

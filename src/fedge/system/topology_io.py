"""Reading and writing topologies as TOML or JSON files (same schema for both)."""

from __future__ import annotations

import json
import numbers
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from fedge.core.errors import ConfigError
from fedge.system.compute import ComputeProfile
from fedge.system.network import (
    LatencyTrace,
    LinkProfile,
    PathLoss,
    WirelessProfile,
    check_number,
)
from fedge.system.toml_writer import to_toml
from fedge.system.topology import Node, Profiles, Topology, neighbors_by_distance, symmetrize

COMPUTE_KEYS = ("flops_per_s", "memory_bytes", "static_power_w", "energy_per_flop_j")
TOP_KEYS = ("profiles", "cloud", "edges", "devices", "wan", "backhaul", "wireless")
_EXTRA_TOP = ("neighbor_radius_m",)


def load_topology(path: str | Path) -> Topology:
    """Load a topology from ``.toml`` or ``.json``. Every key but ``edges`` is optional.

    Schema (TOML spelling; JSON uses the same nesting)::

        neighbor_radius_m = 1500.0      # edges this close are neighbours; default: discs overlap
        [profiles.device]               # defaults for nodes of a tier; any of flops_per_s,
        flops_per_s = 3e9               #   memory_bytes, static_power_w, energy_per_flop_j
        [cloud]                         # x_m, y_m and any compute key
        [wan]                           # bandwidth_bps, latency_s, and optionally
        trace_csv = "wan.csv"           #   trace_csv (relative to this file) or
                                        #   trace = {times_s = [...], latencies_s = [...]}
        [backhaul]                      # as wan
        [wireless]                      # WirelessProfile fields; [wireless.path_loss] PathLoss
        [[edges]]                       # x_m, y_m, coverage_m (required), compute keys,
        neighbors = ["edge1"]           #   neighbors (ids); if any edge lists them, the graph
                                        #   is exactly those lists, made undirected
        [[devices]]                     # x_m, y_m (required), compute keys

    Ids follow list order (edge0.., dev0..). Errors name the offending key path, e.g.
    ``edges[2].coverage_m``.
    """
    p = Path(path)
    if p.suffix not in (".toml", ".json"):
        raise ConfigError("topology file", str(p), "a .toml or .json file")
    try:
        text = p.read_text(encoding="utf-8")
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (OSError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("topology file", str(p), f"a readable {p.suffix} file ({exc})") from None
    return topology_from_dict(data, base_dir=p.parent)


def save_topology(topology: Topology, path: str | Path) -> None:
    """Write ``topology`` to ``.toml`` or ``.json`` in the explicit form load_topology reads."""
    p = Path(path)
    data = topology_to_dict(topology)
    if p.suffix == ".json":
        p.write_text(json.dumps(data, indent=2), encoding="utf-8")
    elif p.suffix == ".toml":
        p.write_text(to_toml(data), encoding="utf-8")
    else:
        raise ConfigError("topology file", str(p), "a .toml or .json file")


def topology_from_dict(data: Mapping[str, Any], base_dir: Path | None = None) -> Topology:
    """Build a Topology from the schema of load_topology (already parsed)."""
    _check_keys(data, "", TOP_KEYS + _EXTRA_TOP)
    defaults = _profiles(data.get("profiles", {}))
    cloud_d = data.get("cloud", {})
    _check_keys(cloud_d, "cloud", ("x_m", "y_m", *COMPUTE_KEYS))
    cloud = _node("cloud", "cloud", "cloud", cloud_d, defaults.cloud, with_coverage=False)
    edges = tuple(
        _node(f"edges[{i}]", f"edge{i}", "edge", d, defaults.edge, with_coverage=True)
        for i, d in enumerate(_table_list(data, "edges", ("x_m", "y_m", "coverage_m", "neighbors")))
    )
    devices = tuple(
        _node(f"devices[{i}]", f"dev{i}", "device", d, defaults.device, with_coverage=False)
        for i, d in enumerate(_table_list(data, "devices", ("x_m", "y_m")))
    )
    graph = _neighbors(data, edges)
    wan = _link(data.get("wan"), "wan", defaults.wan, base_dir)
    backhaul = _link(data.get("backhaul"), "backhaul", defaults.backhaul, base_dir)
    wireless = _wireless(data.get("wireless", {}))
    with _at(""):
        return Topology(cloud, edges, devices, graph, wan, backhaul, wireless)


def topology_to_dict(topology: Topology) -> dict[str, Any]:
    """The explicit, loadable form of ``topology`` (every node fully specified)."""

    def node(n: Node, keys: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {k: float(getattr(n, k)) for k in keys}
        out.update({k: float(getattr(n.compute, k)) for k in COMPUTE_KEYS})
        return out

    edges = [
        node(e, ("x_m", "y_m", "coverage_m")) | {"neighbors": list(topology.edge_neighbors[e.id])}
        for e in topology.edges
    ]
    return {
        "cloud": node(topology.cloud, ("x_m", "y_m")),
        "wan": _link_dict(topology.wan),
        "backhaul": _link_dict(topology.backhaul),
        "wireless": asdict(topology.wireless),
        "edges": edges,
        "devices": [node(d, ("x_m", "y_m")) for d in topology.devices],
    }


def _link_dict(link: LinkProfile) -> dict[str, Any]:
    out: dict[str, Any] = {"bandwidth_bps": link.bandwidth_bps, "latency_s": link.latency_s}
    if link.trace is not None:
        out["trace"] = {
            "times_s": list(link.trace.times_s),
            "latencies_s": list(link.trace.latencies_s),
        }
    return out


@contextmanager
def _at(path: str) -> Iterator[None]:
    """Re-raise a dataclass's ConfigError with ``path`` in place of its class prefix."""
    try:
        yield
    except ConfigError as exc:
        tail = exc.field.split(".", 1)[1] if "." in exc.field else exc.field
        raise ConfigError(f"{path}.{tail}" if path else tail, exc.value, exc.allowed) from None


def _check_keys(d: object, path: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError(path or "topology", d, "a table / object")
    for key in d:
        if key not in allowed:
            name = f"{path}.{key}" if path else key
            raise ConfigError(name, d[key], "one of the keys " + ", ".join(allowed))


def _num(d: Mapping[str, Any], key: str, path: str, default: float | None = None) -> float:
    name = f"{path}.{key}" if path else key
    if key not in d:
        if default is None:
            raise ConfigError(name, None, "a number (required)")
        return default
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(name, value, "a number")
    return float(value)


def _compute(d: Mapping[str, Any], path: str, base: ComputeProfile) -> ComputeProfile:
    values = {k: _num(d, k, path, float(getattr(base, k))) for k in COMPUTE_KEYS}
    with _at(path):
        return ComputeProfile(**values)


def _profiles(d: Mapping[str, Any]) -> Profiles:
    _check_keys(d, "profiles", ("device", "edge", "cloud"))
    base = Profiles()
    tiers = {}
    for tier in ("device", "edge", "cloud"):
        sub = d.get(tier, {})
        _check_keys(sub, f"profiles.{tier}", COMPUTE_KEYS)
        tiers[tier] = _compute(sub, f"profiles.{tier}", getattr(base, tier))
    return Profiles(device=tiers["device"], edge=tiers["edge"], cloud=tiers["cloud"])


def _table_list(
    data: Mapping[str, Any], key: str, keys: tuple[str, ...]
) -> list[Mapping[str, Any]]:
    items = data.get(key, [])
    if not isinstance(items, list):
        raise ConfigError(key, items, "a list of tables ([[" + key + "]])")
    for i, item in enumerate(items):
        _check_keys(item, f"{key}[{i}]", keys + COMPUTE_KEYS)
    return items


def _node(
    path: str,
    node_id: str,
    tier: str,
    d: Mapping[str, Any],
    base: ComputeProfile,
    with_coverage: bool,
) -> Node:
    x_m = _num(d, "x_m", path, None if tier != "cloud" else 0.0)
    y_m = _num(d, "y_m", path, None if tier != "cloud" else 0.0)
    coverage_m = _num(d, "coverage_m", path) if with_coverage else 0.0
    compute = _compute(d, path, base)
    with _at(path):
        return Node(node_id, tier, x_m, y_m, coverage_m, compute)


def _neighbors(data: Mapping[str, Any], edges: tuple[Node, ...]) -> dict[str, tuple[str, ...]]:
    raw = data.get("edges", [])
    ids = [e.id for e in edges]
    if not any("neighbors" in d for d in raw):
        radius = None
        if "neighbor_radius_m" in data:
            radius = _num(data, "neighbor_radius_m", "")
            check_number("neighbor_radius_m", radius)
        return neighbors_by_distance(edges, radius)
    configured: dict[str, tuple[str, ...]] = {}
    for i, d in enumerate(raw):
        peers = d.get("neighbors", [])
        if not isinstance(peers, list):
            raise ConfigError(f"edges[{i}].neighbors", peers, "a list of edge ids")
        for peer in peers:
            if peer not in ids or peer == ids[i]:
                allowed = "other edge ids: " + ", ".join(e for e in ids if e != ids[i])
                raise ConfigError(f"edges[{i}].neighbors", peer, allowed)
        configured[ids[i]] = tuple(peers)
    return symmetrize(configured, ids)


def _link(d: object, path: str, base: LinkProfile, base_dir: Path | None) -> LinkProfile:
    if d is None:
        return base
    _check_keys(d, path, ("bandwidth_bps", "latency_s", "trace", "trace_csv"))
    assert isinstance(d, Mapping)
    trace = base.trace
    if "trace_csv" in d:
        csv_path = Path(str(d["trace_csv"]))
        csv_path = csv_path if csv_path.is_absolute() or base_dir is None else base_dir / csv_path
        if not csv_path.is_file():
            raise ConfigError(f"{path}.trace_csv", str(csv_path), "an existing CSV file")
        trace = LatencyTrace.from_csv(csv_path)
    elif "trace" in d:
        trace = _trace(d["trace"], f"{path}.trace")
    bandwidth_bps = _num(d, "bandwidth_bps", path, base.bandwidth_bps)
    latency_s = _num(d, "latency_s", path, base.latency_s)
    with _at(path):
        return LinkProfile(bandwidth_bps, latency_s, trace)


def _trace(d: object, path: str) -> LatencyTrace:
    _check_keys(d, path, ("times_s", "latencies_s"))
    assert isinstance(d, Mapping)
    for key in ("times_s", "latencies_s"):
        if not isinstance(d.get(key), list):
            raise ConfigError(f"{path}.{key}", d.get(key), "a list of numbers")
    with _at(path):
        return LatencyTrace(tuple(d["times_s"]), tuple(d["latencies_s"]))


def _wireless(d: Mapping[str, Any]) -> WirelessProfile:
    names = tuple(f.name for f in fields(WirelessProfile))
    _check_keys(d, "wireless", names)
    pl = d.get("path_loss", {})
    _check_keys(pl, "wireless.path_loss", tuple(f.name for f in fields(PathLoss)))
    pl_args: dict[str, Any] = {k: _num(pl, k, "wireless.path_loss") for k in pl if k != "model"}
    with _at("wireless.path_loss"):
        path_loss = PathLoss(model=pl.get("model", "3gpp_uma"), **pl_args)
    args = {k: _num(d, k, "wireless") for k in d if k != "path_loss"}
    with _at("wireless"):
        return WirelessProfile(path_loss=path_loss, **args)

"""Config -> SystemModel: topology, hardware profiles, mobility, availability."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedge.core.errors import ConfigError
from fedge.core.node import derive_seed
from fedge.experiment.config import SystemConfig
from fedge.system.availability import Availability
from fedge.system.compute import ComputeProfile
from fedge.system.generators import highway, random_geometric
from fedge.system.mobility import HighwayMobility, Mobility, StaticMobility
from fedge.system.model import SystemModel
from fedge.system.network import LatencyTrace, LinkProfile, WirelessProfile
from fedge.system.peers import PeerGraph
from fedge.system.sharing import LinkSharing
from fedge.system.sumo import SumoScenario, cached_fcd
from fedge.system.topology import Profiles, Topology
from fedge.system.topology_io import load_topology
from fedge.system.traces import TraceMobility, load_fcd

GIB = 1024**3


def _ordered(low_field: str, low: float, high_field: str, high: float) -> None:
    if high < low:
        raise ConfigError(high_field, high, f"a number >= {low_field} ({low})")


def profiles(cfg: SystemConfig) -> Profiles:
    """Hardware and link profiles from the ``[system]`` section."""
    dev = cfg.device
    if dev.gflops_max < dev.gflops_min:
        raise ConfigError(
            "system.device.gflops_max",
            dev.gflops_max,
            f"a number >= system.device.gflops_min ({dev.gflops_min})",
        )
    device = ComputeProfile(
        dev.gflops_min * 1e9, dev.memory_gib * GIB, dev.static_power_w, dev.energy_per_gflop_j / 1e9
    )
    w = cfg.wireless
    return Profiles(
        device=device,
        device_flops_range=(dev.gflops_min * 1e9, dev.gflops_max * 1e9),
        wan=LinkProfile(cfg.wan.bandwidth_mbps * 1e6, cfg.wan.latency_ms / 1e3, wan_trace(cfg)),
        backhaul=LinkProfile(cfg.backhaul.bandwidth_mbps * 1e6, cfg.backhaul.latency_ms / 1e3),
        wireless=WirelessProfile(
            bandwidth_hz=w.bandwidth_mhz * 1e6,
            device_tx_power_w=w.device_tx_power_w,
            edge_tx_power_w=w.edge_tx_power_w,
            noise_psd_w_per_hz=_noise_psd_w_per_hz(cfg),
        ),
    )


def wan_trace(cfg: SystemConfig) -> LatencyTrace | None:
    """The WAN latency trace of ``[system.wan]`` (a CSV file or inline points), if any."""
    wan = cfg.wan
    if wan.latency_trace and wan.latency_points:
        raise ConfigError(
            "system.wan.latency_points", wan.latency_points, "empty when latency_trace is set"
        )
    if wan.latency_trace:
        path = Path(wan.latency_trace)
        if not path.is_file():
            raise ConfigError(
                "system.wan.latency_trace", str(path), "an existing CSV file (time_s,latency_s)"
            )
        return LatencyTrace.from_csv(path)
    if not wan.latency_points:
        return None
    times = tuple(t for t, _ in wan.latency_points)
    lats = tuple(v for _, v in wan.latency_points)
    try:
        return LatencyTrace(times, lats)
    except ConfigError as exc:
        raise ConfigError(
            "system.wan.latency_points",
            wan.latency_points,
            "strictly increasing times, latencies >= 0",
        ) from exc


def _noise_psd_w_per_hz(cfg: SystemConfig) -> float:
    return float(10 ** (cfg.wireless.noise_dbm_per_hz / 10) / 1000)


def peer_graph(cfg: SystemConfig) -> PeerGraph:
    """The device peer graph of ``[system.peers]``."""
    p = cfg.peers
    links = tuple((a, b) for a, b in p.links)
    return PeerGraph(mode=p.graph, k=p.k, radius_m=p.radius_m, links=links)


def d2d_profile(cfg: SystemConfig) -> WirelessProfile | None:
    """The direct device-to-device radio of ``[system.d2d]``; None relays through the edges.

    Path loss is the wireless default and noise is ``system.wireless.noise_dbm_per_hz``.
    """
    d2d = cfg.d2d
    if d2d.mode == "relay":
        return None
    return WirelessProfile(
        bandwidth_hz=d2d.bandwidth_mhz * 1e6,
        device_tx_power_w=d2d.tx_power_w,
        noise_psd_w_per_hz=_noise_psd_w_per_hz(cfg),
        latency_s=d2d.latency_ms / 1e3,
    )


FILE_DEFINES = (
    "edges",
    "devices",
    "spacing_m",
    "coverage_m",
    "area_m",
    "wan",
    "backhaul",
    "wireless",
    "device",
)
"""``[system]`` keys that a topology file defines (nodes, profiles, links)."""


def _topology(cfg: SystemConfig, rng: np.random.Generator) -> Topology:
    if cfg.topology == "file":
        if not cfg.topology_file:
            raise ConfigError("system.topology_file", None, "a path when system.topology = 'file'")
        ignored = [k for k in FILE_DEFINES if k in cfg.model_fields_set]
        if ignored:
            raise ConfigError(
                f"system.{ignored[0]}",
                "set",
                "nothing with system.topology = 'file': the topology file defines the nodes, "
                "their profiles and the links (" + ", ".join(FILE_DEFINES) + ")",
            )
        return load_topology(Path(cfg.topology_file))
    if cfg.topology == "highway":
        return highway(
            cfg.edges,
            cfg.devices,
            rng,
            spacing_m=cfg.spacing_m,
            coverage_m=cfg.coverage_m,
            profiles=profiles(cfg),
        )
    return random_geometric(
        cfg.edges,
        cfg.devices,
        rng,
        area_m=cfg.area_m,
        coverage_m=cfg.coverage_m,
        profiles=profiles(cfg),
    )


def sumo_scenario(cfg: SystemConfig, seed: int) -> SumoScenario:
    """The SUMO scenario of ``[system.sumo]``, on the road or area of the topology."""
    sc = cfg.sumo
    wanted = {"highway": "highway", "grid": "random_geometric"}[sc.network]
    if cfg.topology != wanted:
        raise ConfigError(
            "system.sumo.network",
            sc.network,
            f"a network matching system.topology = {cfg.topology!r} "
            "(highway with 'highway', grid with 'random_geometric')",
        )
    vehicles = sc.vehicles or cfg.devices
    if vehicles < cfg.devices:
        raise ConfigError(
            "system.sumo.vehicles", vehicles, f"0 or at least system.devices ({cfg.devices})"
        )
    _ordered("system.sumo.insert_s", sc.insert_s, "system.sumo.seconds", sc.seconds)
    return SumoScenario(
        network=sc.network,
        vehicles=vehicles,
        insert_s=sc.insert_s,
        seconds=sc.seconds,
        step_s=sc.step_s,
        seed=derive_seed(seed, "sumo", sc.seed_offset) % 2**31,
        segments=cfg.edges,
        segment_m=cfg.spacing_m,
        lanes=sc.lanes,
        speed_mps=sc.speed_mps,
        grid_size=sc.grid_size,
        grid_length_m=cfg.area_m / (sc.grid_size - 1),
    )


def sumo_mobility(cfg: SystemConfig, seed: int) -> TraceMobility:
    """Vehicles from SUMO (cached FCD): ``dev<k>`` is the k-th vehicle to enter."""
    path = cached_fcd(sumo_scenario(cfg, seed), Path(cfg.sumo.cache_dir), cfg.sumo.timeout_s)
    trace = load_fcd(path, max_devices=cfg.devices)
    found = len(trace.device_ids)
    if found < cfg.devices:
        raise ConfigError(
            "system.sumo.vehicles",
            cfg.sumo.vehicles,
            f"enough trips for system.devices ({cfg.devices}); only {found} vehicles entered "
            "the network in system.sumo.seconds",
        )
    return trace


def _mobility(cfg: SystemConfig, topo: Topology, rng: np.random.Generator, seed: int) -> Mobility:
    if cfg.mobility == "sumo":
        return sumo_mobility(cfg, seed)
    if cfg.mobility == "static":
        return StaticMobility(topo)
    if cfg.mobility == "highway":
        if cfg.speed_max_mps < cfg.speed_min_mps:
            raise ConfigError(
                "system.speed_max_mps",
                cfg.speed_max_mps,
                f"a number >= system.speed_min_mps ({cfg.speed_min_mps})",
            )
        return HighwayMobility(topo, rng, speed_range_mps=(cfg.speed_min_mps, cfg.speed_max_mps))
    if not cfg.fcd_file:
        raise ConfigError("system.fcd_file", None, "a SUMO FCD file when system.mobility = 'fcd'")
    return load_fcd(Path(cfg.fcd_file))


def build_system(cfg: SystemConfig, seed: int) -> SystemModel:
    """The simulated world of a run, reproducible from the seed; validated before use."""
    rng = np.random.default_rng(derive_seed(seed, "system"))
    topo = _topology(cfg, rng)
    mobility = _mobility(cfg, topo, rng, seed)
    availability = Availability(
        dropout_prob=cfg.dropout_prob,
        seed=derive_seed(seed, "avail"),
        straggler_prob=cfg.straggler_prob,
        straggler_slowdown=cfg.straggler_slowdown,
    )
    system = SystemModel(
        topo,
        mobility,
        availability,
        out_of_coverage=cfg.out_of_coverage,
        peers=peer_graph(cfg),
        d2d=d2d_profile(cfg),
        links=LinkSharing(cfg.links.shared, cfg.links.policy, cfg.links.slots),
    )
    system.validate()
    return system

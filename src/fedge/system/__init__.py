"""The simulated world: topology, links, compute, energy, mobility, availability and clocks.

It knows nothing of models: callers pass byte counts and FLOPs, and get times and energy back.
"""

from fedge.system.availability import Availability
from fedge.system.clock import SimClock, WallClock
from fedge.system.compute import GIB, ComputeProfile, compute_time_s
from fedge.system.energy import EnergyLedger, energy_j
from fedge.system.generators import build_topology, grid_city, highway, random_geometric
from fedge.system.grid_mobility import GridMobility
from fedge.system.mobility import (
    HandoverEvent,
    HighwayMobility,
    Mobility,
    StaticMobility,
    TraceMobility,
    attachment,
    handover_events,
    load_fcd,
)
from fedge.system.model import ComputeCost, Hop, SystemModel, TransferCost
from fedge.system.network import (
    LatencyTrace,
    LinkProfile,
    PathLoss,
    WirelessProfile,
    path_gain,
    shannon_rate_bps,
    transfer_time_s,
)
from fedge.system.peers import PEER_GRAPHS, PeerGraph, d2d_airtime_s
from fedge.system.topology import Node, Profiles, Topology
from fedge.system.topology_io import (
    load_topology,
    save_topology,
    topology_from_dict,
    topology_to_dict,
)

__all__ = [
    "GIB",
    "PEER_GRAPHS",
    "Availability",
    "ComputeCost",
    "ComputeProfile",
    "EnergyLedger",
    "GridMobility",
    "HandoverEvent",
    "HighwayMobility",
    "Hop",
    "LatencyTrace",
    "LinkProfile",
    "Mobility",
    "Node",
    "PathLoss",
    "PeerGraph",
    "Profiles",
    "SimClock",
    "StaticMobility",
    "SystemModel",
    "Topology",
    "TraceMobility",
    "TransferCost",
    "WallClock",
    "WirelessProfile",
    "attachment",
    "build_topology",
    "compute_time_s",
    "d2d_airtime_s",
    "energy_j",
    "grid_city",
    "handover_events",
    "highway",
    "load_fcd",
    "load_topology",
    "path_gain",
    "random_geometric",
    "save_topology",
    "shannon_rate_bps",
    "topology_from_dict",
    "topology_to_dict",
    "transfer_time_s",
]

"""Coordinators written only against Transport; importing registers them all."""

from fedge.algorithms.apps import LocalTrainer, trainer_app
from fedge.algorithms.base import (
    ALGORITHMS,
    AlgorithmSpec,
    Coordinator,
    History,
    Observer,
    RoundRecord,
)
from fedge.algorithms.decentralized import Decentralized, PeerLearner, PeerSettings
from fedge.algorithms.fedavg import FedAvg
from fedge.algorithms.hierarchical import EdgeServer, HierarchicalFL
from fedge.algorithms.multiserver import Exchange, MultiServerFL

__all__ = [
    "ALGORITHMS",
    "AlgorithmSpec",
    "Coordinator",
    "Decentralized",
    "EdgeServer",
    "Exchange",
    "FedAvg",
    "HierarchicalFL",
    "History",
    "LocalTrainer",
    "MultiServerFL",
    "Observer",
    "PeerLearner",
    "PeerSettings",
    "RoundRecord",
    "trainer_app",
]

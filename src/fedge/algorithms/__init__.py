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
from fedge.algorithms.split import CloudTail, SplitEdge, SplitSettings
from fedge.algorithms.split_learning import SplitLearning

__all__ = [
    "ALGORITHMS",
    "AlgorithmSpec",
    "CloudTail",
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
    "SplitEdge",
    "SplitLearning",
    "SplitSettings",
    "trainer_app",
]

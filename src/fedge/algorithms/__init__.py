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
from fedge.algorithms.fedavg import FedAvg
from fedge.algorithms.hierarchical import EdgeServer, HierarchicalFL, SingleServerFL

__all__ = [
    "ALGORITHMS",
    "AlgorithmSpec",
    "Coordinator",
    "EdgeServer",
    "FedAvg",
    "HierarchicalFL",
    "History",
    "LocalTrainer",
    "Observer",
    "RoundRecord",
    "SingleServerFL",
    "trainer_app",
]

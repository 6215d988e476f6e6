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

__all__ = [
    "ALGORITHMS",
    "AlgorithmSpec",
    "Coordinator",
    "FedAvg",
    "History",
    "LocalTrainer",
    "Observer",
    "RoundRecord",
    "trainer_app",
]

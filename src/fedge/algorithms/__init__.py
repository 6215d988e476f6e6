"""Coordinators written only against Transport, and the hooks that assemble them;
importing this package registers every algorithm."""

from fedge.algorithms.apps import LocalTrainer, trainer_app
from fedge.algorithms.asynchronous import AsyncEdge, AsyncFL, AsyncServer, AsyncSettings
from fedge.algorithms.base import (
    ALGORITHMS,
    AlgorithmSpec,
    Assembly,
    BuildContext,
    Coordinator,
    History,
    Observer,
    RoundRecord,
)
from fedge.algorithms.clustered import ClusteredHFL, ClusterSettings
from fedge.algorithms.decentralized import Decentralized, PeerLearner, PeerSettings
from fedge.algorithms.fedavg import FedAvg
from fedge.algorithms.federation import FederationSettings
from fedge.algorithms.hierarchical import EdgeServer, HierarchicalFL
from fedge.algorithms.multiserver import Exchange, MultiServerFL
from fedge.algorithms.personalization import PersonalizationSettings
from fedge.algorithms.selection import SELECTORS, SelectionHint, Selector, make_selector
from fedge.algorithms.split import CloudTail, SplitEdge, SplitSettings
from fedge.algorithms.split_build import tmoa_cut
from fedge.algorithms.split_learning import SplitLearning

__all__ = [
    "ALGORITHMS",
    "SELECTORS",
    "AlgorithmSpec",
    "Assembly",
    "AsyncEdge",
    "AsyncFL",
    "AsyncServer",
    "AsyncSettings",
    "BuildContext",
    "CloudTail",
    "ClusterSettings",
    "ClusteredHFL",
    "Coordinator",
    "Decentralized",
    "EdgeServer",
    "Exchange",
    "FedAvg",
    "FederationSettings",
    "HierarchicalFL",
    "History",
    "LocalTrainer",
    "MultiServerFL",
    "Observer",
    "PeerLearner",
    "PeerSettings",
    "PersonalizationSettings",
    "RoundRecord",
    "SelectionHint",
    "Selector",
    "SplitEdge",
    "SplitLearning",
    "SplitSettings",
    "make_selector",
    "tmoa_cut",
    "trainer_app",
]

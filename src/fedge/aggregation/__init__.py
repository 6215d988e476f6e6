"""Pure aggregation over updates: FedAvg, robust rules and server optimizers.

Importing this package registers every aggregator in ``AGGREGATORS`` and every server
optimizer in ``SERVER_OPTIMIZERS``.
"""

from fedge.aggregation.interserver import (
    INTERSERVER,
    Candidate,
    Evaluate,
    InterServerResult,
    InterServerRule,
    Score,
    interserver,
    spaa_penalties,
)
from fedge.aggregation.mean import (
    AGGREGATORS,
    AggregationError,
    Aggregator,
    aggregate,
    check_states,
    check_updates,
    weighted_mean,
)
from fedge.aggregation.robust import (
    clip_by_norm,
    clipped_mean,
    krum,
    krum_scores,
    median,
    multikrum,
    trimmed_mean,
)
from fedge.aggregation.server_opt import (
    SERVER_OPTIMIZERS,
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedYogi,
    NoServerOptimizer,
    ServerOptimizer,
    make_server_optimizer,
    pseudo_gradient,
)

__all__ = [
    "AGGREGATORS",
    "INTERSERVER",
    "SERVER_OPTIMIZERS",
    "AggregationError",
    "Aggregator",
    "Candidate",
    "Evaluate",
    "FedAdagrad",
    "FedAdam",
    "FedAvgM",
    "FedYogi",
    "InterServerResult",
    "InterServerRule",
    "NoServerOptimizer",
    "Score",
    "ServerOptimizer",
    "aggregate",
    "check_states",
    "check_updates",
    "clip_by_norm",
    "clipped_mean",
    "interserver",
    "krum",
    "krum_scores",
    "make_server_optimizer",
    "median",
    "multikrum",
    "pseudo_gradient",
    "spaa_penalties",
    "trimmed_mean",
    "weighted_mean",
]

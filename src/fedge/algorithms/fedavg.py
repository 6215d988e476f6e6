"""FedAvg in the cloud-only setting, and its family: FedProx, FedAvgM, FedAdam, FedYogi.

Every device talks to the cloud (on the simulated engine over its wireless link to the
nearest edge, then the WAN). Each round the cloud samples ``clients_per_round`` of the
reachable devices with its seeded rng, sends them the global state, aggregates the
updates that arrive before the deadline and applies the server optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedge.aggregation import aggregate, make_server_optimizer
from fedge.algorithms.base import (
    AlgorithmSpec,
    RoundLoop,
    RoundRecord,
    register_algorithm,
    weighted_metric,
)
from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.core.transport import Transport
from fedge.core.update import ModelState, Update


@dataclass
class FedAvg(RoundLoop):
    """Synchronous rounds of sample -> local training -> aggregate -> server step."""

    clients_per_round: int = 10
    aggregator: str = "mean"
    aggregator_params: Mapping[str, Any] = field(default_factory=dict)
    server_optimizer: str = "none"
    server_params: Mapping[str, Any] = field(default_factory=dict)
    deadline_s: float | None = None
    on_handover: str | None = None
    """What a device that left the asking edge does with its update: relay, redirect, drop."""
    train_overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.clients_per_round < 1:
            raise ConfigError(
                "federation.clients_per_round", self.clients_per_round, "an integer >= 1"
            )
        self._server_opt = make_server_optimizer(self.server_optimizer, **self.server_params)

    def select(self, devices: list[str], rng: np.random.Generator) -> list[str]:
        """Uniform sampling without replacement, in the order drawn."""
        k = min(self.clients_per_round, len(devices))
        return [devices[i] for i in rng.choice(len(devices), size=k, replace=False)]

    def round(
        self,
        transport: Transport,
        state: ModelState,
        rng: np.random.Generator,
        r: int,
        train: Mapping[str, Any] | None = None,
    ) -> tuple[ModelState, dict[str, float], list[Update]]:
        """One round; ``train`` overrides the devices' local training settings."""
        chosen = self.select(transport.nodes("device"), rng)
        payload: dict[str, Any] = {"state": state}
        if self.on_handover is not None:
            payload["on_handover"] = self.on_handover
        overrides = {**self.train_overrides, **(train or {})}
        if overrides:
            payload["train"] = overrides
        msgs = [Message(transport.node_id, d, "train", r, payload) for d in chosen]
        updates = [m.payload["update"] for m in transport.send(msgs, self.deadline_s)]
        if updates:
            agg = aggregate(self.aggregator, updates, rng, **self.aggregator_params)
            state = self._server_opt.step(state, agg)
        metrics = {
            "selected": float(len(chosen)),
            "participants": float(len(updates)),
            "train_loss": weighted_metric(updates, "train_loss"),
        }
        return state, metrics, updates

    def step(
        self, transport: Transport, state: ModelState, rng: np.random.Generator, r: int, rounds: int
    ) -> RoundRecord:
        state, metrics = self.round(transport, state, rng, r)[:2]
        return RoundRecord(r, state, metrics)


def _family(name: str, description: str, **defaults: Any) -> AlgorithmSpec:
    return register_algorithm(AlgorithmSpec(name, description, FedAvg, defaults))


FEDAVG = _family("fedavg", "FedAvg (McMahan et al. 2017), devices talk to the cloud")
FEDPROX = _family("fedprox", "FedProx: FedAvg with a proximal term mu (training.proximal_mu)")
FEDAVGM = _family("fedavgm", "FedAvg with server momentum", server_optimizer="fedavgm")
FEDADAM = _family("fedadam", "FedAvg with the Adam server optimizer", server_optimizer="fedadam")
FEDYOGI = _family("fedyogi", "FedAvg with the Yogi server optimizer", server_optimizer="fedyogi")

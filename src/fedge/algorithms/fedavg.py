"""FedAvg in the cloud-only setting, and its family: FedProx, FedAvgM, FedAdam, FedYogi.

Every device talks to the cloud (on the simulated engine over its wireless link to the
nearest edge, then the WAN). Each round the cloud selects ``clients_per_round`` of the
reachable devices with its seeded rng (``selection``: uniformly by default, see
``fedge.algorithms.selection``), sends them the global state, aggregates the updates that
arrive before the deadline and applies the server optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedge.aggregation.pipeline import ServerPipeline
from fedge.algorithms.base import (
    RoundLoop,
    RoundRecord,
    weighted_metric,
)
from fedge.algorithms.privacy import Privacy, PrivateRound
from fedge.algorithms.secure_settings import SecureRequest
from fedge.algorithms.selection import SelectionContext, SelectionHint, make_selector
from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.core.transport import Transport
from fedge.core.update import ModelState, Update

if TYPE_CHECKING:
    from fedge.algorithms.secure_settings import SecureRound


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
    selection: str = "random"
    """The client selector (``SELECTORS``): random, deadline_aware, power_of_choice."""
    selection_params: Mapping[str, Any] = field(default_factory=dict)
    selection_hint: SelectionHint | None = None
    """The devices' example counts and local training, for selectors that need them
    (deadline_aware; power_of_choice by data size); set by whoever builds the federation."""
    secure: SecureRound | None = None
    """Secure or homomorphic aggregation (``[secure_aggregation]``): the round's devices
    train inside its protocol and the server learns only the weighted sum of their updates."""
    privacy: Privacy | None = None
    """Client-level DP of this aggregation (``fedge.algorithms.privacy``); its state lives in
    ``privacy_memory``, or in the memory a caller passes to ``round`` (an edge's node state)."""

    def __post_init__(self) -> None:
        if self.clients_per_round < 1:
            raise ConfigError(
                "federation.clients_per_round", self.clients_per_round, "an integer >= 1"
            )
        self.pipeline = ServerPipeline(
            self.aggregator,
            dict(self.aggregator_params),
            self.server_optimizer,
            dict(self.server_params),
        )
        self.selector = make_selector(
            self.selection, dict(self.selection_params), self.clients_per_round, self.deadline_s
        )
        self.privacy_memory: dict[str, Any] = {}

    def select(
        self, transport: Transport, rng: np.random.Generator, r: int, payload: Mapping[str, Any]
    ) -> list[str]:
        """Up to ``clients_per_round`` of the reachable devices, chosen by the selector for the
        train request ``payload`` of round ``r``, in the order they are asked."""
        devices = transport.nodes("device")
        k = min(self.clients_per_round, len(devices))
        ctx = SelectionContext(transport, r, payload, self.deadline_s, self.selection_hint)
        return self.selector.select(devices, k, rng, ctx)

    def round(
        self,
        transport: Transport,
        state: ModelState,
        rng: np.random.Generator,
        r: int,
        train: Mapping[str, Any] | None = None,
        memory: dict[str, Any] | None = None,
    ) -> tuple[ModelState, dict[str, float], list[Update]]:
        """One round; ``train`` overrides the devices' local training settings; ``memory``
        holds the privacy state of the node that runs it (default: this coordinator's)."""
        model = Update(state, origin=transport.node_id, round=r)
        payload: dict[str, Any] = {"model": model}
        if self.on_handover is not None:
            payload["on_handover"] = self.on_handover
        overrides = {**self.train_overrides, **(train or {})}
        if overrides:
            payload["train"] = overrides
        population = len(transport.nodes("device")) if self.privacy is not None else 0
        cohort = min(self.clients_per_round, population)
        memory = self.privacy_memory if memory is None else memory
        if self.privacy is not None:
            self.privacy.admit(memory, population, cohort)
        chosen = self.select(transport, rng, r, payload)
        if self.secure is not None:
            return self._secure_round(transport, state, rng, r, chosen, payload)
        msgs = [Message(transport.node_id, d, "train", r, payload) for d in chosen]
        updates = [m.payload["update"] for m in transport.send(msgs, self.deadline_s)]
        private: dict[str, float] = {}
        if self.privacy is None:
            state = self.pipeline.run(state, updates, rng)
        else:
            privacy = self.privacy
            state, private = privacy.aggregate(
                PrivateRound(self.pipeline, state, updates, rng, memory, population, cohort)
            )
            private.update(privacy.metrics(memory, 1))
        metrics = {
            "selected": float(len(chosen)),
            "participants": float(len(updates)),
            "train_loss": weighted_metric(updates, "train_loss"),
            **private,
        }
        return state, metrics, updates

    def _secure_round(
        self,
        transport: Transport,
        state: ModelState,
        rng: np.random.Generator,
        r: int,
        chosen: list[str],
        payload: dict[str, Any],
    ) -> tuple[ModelState, dict[str, float], list[Update]]:
        """The round through secure aggregation: its mean delta goes to the pipeline's
        finalize stages and server optimizer; the one update returned is the sum's summary
        (total weight, mean training loss)."""
        assert self.secure is not None
        metrics: dict[str, float] = {"selected": float(len(chosen))}
        if not chosen:
            empty = {"participants": 0.0, "train_loss": float("nan")}
            return state, {**metrics, **empty, **self.secure.empty_metrics()}, []
        request = SecureRequest(transport, chosen, payload, state, r, self.deadline_s)
        agg, summary, extra = self.secure.run(request)
        # finalize stages (noise, accounting) see one update, the sum's, with its count
        counted = {**summary.metrics, "participants": extra["participants"]}
        summary = replace(summary, metrics=counted)
        state = self.pipeline.finalize(agg, [summary], rng)
        return state, {**metrics, "train_loss": summary.metrics["train_loss"], **extra}, [summary]

    def step(
        self, transport: Transport, state: ModelState, rng: np.random.Generator, r: int, rounds: int
    ) -> RoundRecord:
        if r == 1:  # a run that starts at round 1 has spent no privacy budget yet
            self.privacy_memory = {}
        state, metrics = self.round(transport, state, rng, r)[:2]
        return RoundRecord(r, state, metrics, flagged=tuple(self.pipeline.flagged()))

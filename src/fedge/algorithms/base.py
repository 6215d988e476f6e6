"""What every coordinator shares: round records, the history, the algorithm registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedge.core.errors import ConfigError
from fedge.core.registry import Registry
from fedge.core.transport import Transport
from fedge.core.update import ModelState, Update


@dataclass(frozen=True)
class RoundRecord:
    """The global model after a round and what the coordinator measured in it."""

    round: int
    state: ModelState
    metrics: Mapping[str, float]
    evaluated: bool = False
    """True when ``metrics`` already hold the evaluation (e.g. edges evaluated their models)."""


Observer = Callable[[RoundRecord], bool]
"""Called after every round; returning True stops the run (e.g. target accuracy reached)."""


@dataclass
class History:
    """Per-round metrics and the final model; earlier models are not kept (memory)."""

    metrics: list[Mapping[str, float]] = field(default_factory=list)
    final_state: ModelState = field(default_factory=dict)

    def record(self, record: RoundRecord) -> None:
        self.metrics.append(record.metrics)
        self.final_state = record.state


class Coordinator(Protocol):
    """An algorithm's server side, written only against Transport."""

    def run(
        self,
        transport: Transport,
        initial_state: ModelState,
        rng: np.random.Generator,
        rounds: int,
        observer: Observer | None = None,
        first_round: int = 1,
    ) -> History:
        """Rounds ``first_round..rounds`` from ``initial_state``; a resumed run passes the
        round after its checkpoint and the state, rng and coordinator restored from it."""
        ...


class RoundLoop(ABC):
    """A coordinator whose run is a loop of synchronous rounds; subclasses define ``step``."""

    @abstractmethod
    def step(
        self, transport: Transport, state: ModelState, rng: np.random.Generator, r: int, rounds: int
    ) -> RoundRecord:
        """Round ``r`` of ``rounds`` from the global ``state``; the record holds the next one."""

    def run(
        self,
        transport: Transport,
        initial_state: ModelState,
        rng: np.random.Generator,
        rounds: int,
        observer: Observer | None = None,
        first_round: int = 1,
    ) -> History:
        """The history holds the rounds run by this call (from ``first_round`` on)."""
        if first_round < 1:
            raise ConfigError("first_round", first_round, "an integer >= 1")
        history = History()
        state = initial_state
        for r in range(first_round, rounds + 1):
            record = self.step(transport, state, rng, r, rounds)
            history.record(record)
            state = record.state
            if observer is not None and observer(record):
                break
        return history


@dataclass(frozen=True)
class AlgorithmSpec:
    """A registered algorithm: how to make its coordinator and which apps its nodes run."""

    name: str
    description: str
    make: Callable[..., Coordinator]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    roles: tuple[str, ...] = ()
    """Node roles besides training devices: "edge" (edge servers), "exchange" (edges that
    exchange models with their neighbours and score them on validation splits)."""


ALGORITHMS: Registry[AlgorithmSpec] = Registry("algorithm")


def register_algorithm(spec: AlgorithmSpec) -> AlgorithmSpec:
    ALGORITHMS.add(spec.name, spec, spec.description)
    return spec


def weighted_metric(updates: list[Update], key: str) -> float:
    """Mean of a per-update metric weighted by the updates' weights (NaN when absent)."""
    pairs = [(u.weight, u.metrics[key]) for u in updates if key in u.metrics]
    total = sum(w for w, _ in pairs)
    return sum(w * v for w, v in pairs) / total if total > 0 else float("nan")

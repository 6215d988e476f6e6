"""What every coordinator shares: round records, the history, the algorithm registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from torch import nn

from fedge.core.errors import ConfigError
from fedge.core.node import Middleware, NodeApp
from fedge.core.registry import Registry
from fedge.core.settings import Section
from fedge.core.transport import Transport
from fedge.core.update import ModelState, Update
from fedge.learning import ArrayDataset, ModelProfile, TrainConfig, evaluate, load_state
from fedge.system.model import SystemModel


@dataclass(frozen=True)
class RoundRecord:
    """The global model after a round and what the coordinator measured in it."""

    round: int
    state: ModelState
    metrics: Mapping[str, float]
    evaluated: bool = False
    """True when ``metrics`` already hold the evaluation (e.g. edges evaluated their models)."""
    flagged: tuple[str, ...] = ()
    """Participants that the aggregators' detection has flagged so far (every tier)."""


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

    def finished(self, transport: Transport, record: RoundRecord) -> bool:
        """Whether the run ends after ``record`` although the observer did not stop it (a
        coordinator's own budget); never by default."""
        return False

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
            if (observer is not None and observer(record)) or self.finished(transport, record):
                break
        return history


EVAL_BATCH = 256  # faster than larger batches on CPU for the reference CNNs
Evaluator = Callable[[ModelState], Mapping[str, float]]


@dataclass
class BuildContext:
    """What ``build`` hands an algorithm's assembly hook: the built world, nothing named.

    ``train`` is the training set after the edges' validation splits were held out;
    ``parts[i]`` indexes device i's samples in it (``local_tests[i]`` its own test split,
    empty unless the algorithm is personalized); ``validation[e]`` is edge e's split.
    """

    config: Any
    """The whole experiment config (sections by attribute), for settings shared by
    several algorithms (e.g. ``federation.deadline_s`` for split training)."""
    settings: Any
    """This algorithm's own settings section, with the variant's defaults applied."""
    training: TrainConfig
    system: SystemModel
    train: ArrayDataset
    test: ArrayDataset
    parts: Sequence[np.ndarray]
    local_tests: Sequence[np.ndarray]
    validation: list[ArrayDataset]
    model: nn.Module
    profile: ModelProfile
    seed: int
    clients: Sequence[ArrayDataset] | None = None
    """A federated dataset's clients (one per device, made on demand); None: the devices'
    data are ``parts`` of ``train``."""

    def device_dataset(self, i: int) -> ArrayDataset:
        """Device i's training samples (an index view, or the federated dataset's client)."""
        if self.clients is not None:
            return self.clients[i]
        return self.train.view(self.parts[i])

    attackers: frozenset[str] = frozenset()
    """Nodes configured to attack (``[[attack]]``): for reports that keep to honest nodes."""

    def evaluator(self, data: ArrayDataset | None = None) -> Evaluator:
        """Evaluates a state with the shared model on ``data`` (default: the test set)."""
        target = self.test if data is None else data
        model = self.model

        def run(state: ModelState) -> dict[str, float]:
            load_state(model, state)
            return evaluate(model, target, batch_size=EVAL_BATCH).as_dict()

        return run

    def device_data(self) -> list[ArrayDataset]:
        """Each device's training samples, in the order of ``system.ids("device")``: index
        views into the one training array (no per-device copies)."""
        if self.clients is not None:
            return list(self.clients)
        return [self.train.view(idx) for idx in self.parts]


@dataclass(frozen=True)
class Assembly:
    """What an algorithm builds: the apps of its nodes, its coordinator, and the node the
    coordinator drives from (``cloud``, or ``fedge.core.transport.SYNC`` for decentralized
    protocols)."""

    apps: Mapping[str, NodeApp]
    coordinator: Coordinator
    driver: str = "cloud"
    finish: Mapping[str, Sequence[Middleware]] = field(default_factory=dict)
    """Middleware per node that runs last on its replies, after the client pipeline
    (secure aggregation masks the update that compression already shaped)."""


Check = Callable[[Any], None]
"""(whole config) -> None, raising ConfigError."""


@dataclass(frozen=True)
class AlgorithmSpec:
    """A registered algorithm: its settings section, the hook that assembles it, and what
    the rest of the framework must know about it (links, data splits, deployment roles)."""

    name: str
    description: str
    assemble: Callable[[BuildContext], Assembly]
    settings: type[Section]
    """The pydantic section that is both its TOML schema and its constructor input."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Values of its section that this variant fixes unless the config sets them."""
    roles: tuple[str, ...] = ()
    """Node roles besides training devices: "edge" (edge servers), "exchange" (edges that
    exchange models with their neighbours), "peer" (decentralized devices), "split"."""
    links: tuple[str, ...] = ()
    """Links (sender tier - receiver tier) on which its models travel as updates: where a
    client-side transform (``[[compression]]``) can apply."""
    validation: bool = False
    """Edges hold out a validation split (``data.validation_size``, default 200)."""
    personalized: bool = False
    """Devices keep a share of their samples as their own test split."""
    check: Check | None = None
    """Checks across sections (run before any work), e.g. FedProx needs proximal_mu > 0."""
    finetune: Literal["global", "own", "none"] = "global"
    """How ``[personalization] finetune_epochs`` applies (``fedge.algorithms.personalization``):
    ``global``, its rounds' records carry the global model, which each device fine-tunes
    before its own-split evaluation; ``own``, it evaluates personal models per device and
    fine-tunes them itself; ``none``, fine-tuning is refused (no global model)."""
    unused: tuple[str, ...] = ()
    """Keys of its section it does not read: a config that sets one gets a warning."""
    secure: bool = False
    """Its servers average device updates and can do so securely (``[secure_aggregation]``)."""
    privacy: tuple[str, ...] = ()
    """Tiers at which it can add central DP noise (``privacy.noise_at``; the first is the
    default); empty: no differential privacy (``fedge.algorithms.privacy``)."""

    def section(self, config: Any) -> Section:
        """The algorithm's section from ``config`` with the variant's defaults applied
        (a value the config sets explicitly wins)."""
        current: Section = getattr(config, self.settings.section)
        fixed = {k: v for k, v in self.defaults.items() if k not in current.model_fields_set}
        if not fixed:
            return current
        return self.settings.model_validate({**current.model_dump(by_alias=True), **fixed})


ALGORITHMS: Registry[AlgorithmSpec] = Registry(
    "algorithm", lambda obj: isinstance(obj, AlgorithmSpec), "an AlgorithmSpec"
)


def register_algorithm(spec: AlgorithmSpec) -> AlgorithmSpec:
    ALGORITHMS.add(spec.name, spec, spec.description)
    return spec


def weighted_metric(updates: list[Update], key: str) -> float:
    """Mean of a per-update metric weighted by the updates' weights (NaN when absent)."""
    pairs = [(u.weight, u.metrics[key]) for u in updates if key in u.metrics]
    total = sum(w for w, _ in pairs)
    return sum(w * v for w, v in pairs) / total if total > 0 else float("nan")

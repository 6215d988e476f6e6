"""Client selection: which of the reachable devices a FedAvg round asks to train.

A selector is a small frozen dataclass registered in ``SELECTORS`` under its name
(``federation.selection``); its fields are its parameters (``federation.selection_params``),
checked when the coordinator is built (``make_selector``). Each round ``select`` picks at
most ``k`` of the devices with the coordinator's seeded rng, given a ``SelectionContext``
(the transport, the round, the train request it is about to send).

What a coordinator cannot observe about its devices (their example counts, their local
training) comes as a ``SelectionHint`` computed by whoever builds the federation.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from fedge.algorithms.apps import _override
from fedge.core.errors import ConfigError, FedgeError
from fedge.core.message import Message
from fedge.core.registry import Registry
from fedge.core.transport import Transport
from fedge.learning import TrainConfig

SAMPLING = ("uniform", "data_size")


def _param(name: str) -> str:
    return f"federation.selection_params.{name}"


def samples_per_update(n_examples: int, cfg: TrainConfig) -> int:
    """Examples one ``local_train`` call processes, as its minibatches do: ``epochs`` passes,
    or exactly ``steps`` batches cycling through epochs (an epoch's last batch may be short)."""
    if n_examples <= 0:
        return 0
    if cfg.steps <= 0:
        return cfg.epochs * n_examples
    per_epoch = -(-n_examples // cfg.batch_size)
    full, rest = divmod(cfg.steps, per_epoch)
    return full * n_examples + rest * cfg.batch_size


@dataclass(frozen=True)
class SelectionHint:
    """What a coordinator cannot see of its devices: examples per device, their local training.

    Why explicit inputs rather than asking the devices: a device update costs
    ``samples_per_update(examples, training) * flops_per_sample`` FLOPs, and both factors are
    known where the federation is built; asking would add a message round trip to every round
    to learn numbers that do not change. The model's bytes need no hint: the coordinator
    prices the exact request it is about to send. ``nbytes_up`` is the size of an update as
    it travels back (after compression); None takes the request's size (a dense update of the
    same model: an upper bound when updates are compressed).
    """

    examples: Mapping[str, int]
    train: TrainConfig
    flops_per_sample: float
    """Training FLOPs per example (the profiler's ``flops_train``)."""
    nbytes_up: int | None = None

    def n_examples(self, device: str) -> int:
        if device not in self.examples:
            raise FedgeError(f"the selection hint has no example count for device {device!r}")
        return int(self.examples[device])

    def update_flops(self, device: str, overrides: Mapping[str, Any]) -> float:
        """FLOPs of the update ``device`` computes under the round's training overrides
        (``local_rounds`` and the rest, applied exactly as the device applies them)."""
        cfg = _override(self.train, dict(overrides))
        return samples_per_update(self.n_examples(device), cfg) * self.flops_per_sample


@dataclass(frozen=True)
class SelectionContext:
    """What a selector may use in one round besides the devices and the rng."""

    transport: Transport
    round: int
    payload: Mapping[str, Any]
    """The train request's payload: ``model`` (an Update) and the ``train`` overrides."""
    deadline_s: float | None
    hint: SelectionHint | None


@dataclass(frozen=True)
class Selector(ABC):
    """A selection rule; its dataclass fields are its parameters."""

    def check(self, clients_per_round: int, deadline_s: float | None) -> None:  # noqa: B027
        """Raise ConfigError when the rule cannot work with these federation settings
        (every setting works unless a rule says otherwise)."""

    @abstractmethod
    def select(
        self, devices: list[str], k: int, rng: np.random.Generator, ctx: SelectionContext
    ) -> list[str]:
        """At most ``k`` of ``devices`` (``k <= len(devices)``), in the order they train."""


SELECTORS: Registry[type[Selector]] = Registry("selector")


def _draw(devices: list[str], k: int, rng: np.random.Generator) -> list[str]:
    return [devices[i] for i in rng.choice(len(devices), size=k, replace=False)]


@SELECTORS.register("random")
@dataclass(frozen=True)
class RandomSelection(Selector):
    """Uniform sampling without replacement, in the order drawn (the default)."""

    def select(
        self, devices: list[str], k: int, rng: np.random.Generator, ctx: SelectionContext
    ) -> list[str]:
        return _draw(devices, k, rng)


@SELECTORS.register("poisson")
@dataclass(frozen=True)
class PoissonSelection(Selector):
    """Each device independently with probability ``rate`` (Poisson sampling).

    The sampling of DP-FedAvg's privacy analysis: the cohort's size is random, with mean
    ``rate·n``, and ``clients_per_round`` does not cap it (a cap would break the analysis).
    """

    rate: float = 0.1

    def __post_init__(self) -> None:
        rate = self.rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
            raise ConfigError(_param("rate"), rate, "a number with 0 < rate <= 1")

    def select(
        self, devices: list[str], k: int, rng: np.random.Generator, ctx: SelectionContext
    ) -> list[str]:
        draws = rng.random(len(devices))
        return [d for d, u in zip(devices, draws, strict=True) if u < self.rate]


def round_trip_s(device: str, ctx: SelectionContext) -> float:
    """Modelled time for ``device`` to get the round's request, train and send its update."""
    hint = ctx.hint
    if hint is None:
        raise FedgeError(
            "deadline-aware selection needs each device's update cost: give the coordinator "
            "a SelectionHint (FedAvg.selection_hint)"
        )
    transport = ctx.transport
    request = Message(transport.node_id, device, "train", ctx.round, dict(ctx.payload))
    nbytes_down = request.nbytes()
    nbytes_up = hint.nbytes_up if hint.nbytes_up is not None else nbytes_down
    flops = hint.update_flops(device, ctx.payload.get("train", {}))
    time_s = transport.estimate_round_trip_s(device, nbytes_down, flops, nbytes_up, ctx.round)
    if time_s is None:
        raise FedgeError(
            "deadline-aware selection needs the simulated engine: this transport "
            f"({type(transport).__name__}) has no model of time to estimate round trips with"
        )
    return time_s


@SELECTORS.register("deadline_aware")
@dataclass(frozen=True)
class DeadlineAware(Selector):
    """Uniform sampling among the devices whose modelled round trip meets the deadline.

    Like FedCS (Nishio & Yonetani, ICC 2019) it leaves out the devices that cannot answer in
    time, but it then samples the rest uniformly (as ``random`` does: with a deadline every
    device meets, the draw is the same) instead of FedCS's greedy packing. A device's round
    trip is the transport's ``estimate_round_trip_s`` at the time the round starts: the exact
    train request down, the FLOPs of its update (``SelectionHint``), the update back; a
    device that meets it exactly is kept (the transport keeps replies arriving at the
    deadline). Fewer than ``k`` such devices: all of them train.
    """

    def check(self, clients_per_round: int, deadline_s: float | None) -> None:
        if deadline_s is None:
            raise ConfigError(
                "federation.selection",
                "deadline_aware",
                "another selection, or deadline_aware with federation.deadline_s set",
            )

    def select(
        self, devices: list[str], k: int, rng: np.random.Generator, ctx: SelectionContext
    ) -> list[str]:
        limit_s = math.inf if ctx.deadline_s is None else ctx.deadline_s
        fits = [d for d in devices if round_trip_s(d, ctx) <= limit_s]
        return _draw(fits, min(k, len(fits)), rng)


@SELECTORS.register("power_of_choice")
@dataclass(frozen=True)
class PowerOfChoice(Selector):
    """The k highest local losses among d sampled candidates (Cho et al. 2020, pow-d).

    Cho, Wang & Joshi, "Client Selection in Federated Learning: Convergence Analysis and
    Power-of-Choice Selection Strategies" (arXiv:2010.01243): the server samples ``d``
    candidates without replacement, sends them the global model, each answers its local loss
    on all its data (a real ``loss`` message, charged like any other), and the ``k`` with the
    highest loss train (ties by device id). Interpretations: ``sampling="uniform"`` (default)
    draws the candidates uniformly, since the coordinator does not know data sizes;
    ``"data_size"`` draws them with probability proportional to the examples in the
    ``SelectionHint``, as the paper does. ``d`` unset is ``2·k``; fewer reachable devices:
    all of them are candidates. A candidate that does not answer (unavailable) is not
    chosen, so fewer than ``k`` may train; the query has no deadline (its replies are
    small); a NaN loss ranks last. Aggregation is the coordinator's own (the paper averages
    the chosen clients' models with equal weights).
    """

    d: int | None = None
    sampling: str = "uniform"

    def __post_init__(self) -> None:
        d = self.d
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise ConfigError(_param("d"), d, "an integer >= 1, or unset for 2·clients_per_round")
        if self.sampling not in SAMPLING:
            raise ConfigError(_param("sampling"), self.sampling, " | ".join(SAMPLING))

    def check(self, clients_per_round: int, deadline_s: float | None) -> None:
        if self.d is not None and self.d < clients_per_round:
            allowed = f"an integer >= clients_per_round ({clients_per_round})"
            raise ConfigError(_param("d"), self.d, allowed)

    def select(
        self, devices: list[str], k: int, rng: np.random.Generator, ctx: SelectionContext
    ) -> list[str]:
        d = min(self.d if self.d is not None else 2 * k, len(devices))
        losses = query_losses(self.candidates(devices, d, rng, ctx), ctx)
        ranked = sorted(losses, key=lambda dev: (-_rank_loss(losses[dev]), dev))
        return ranked[:k]

    def candidates(
        self, devices: list[str], d: int, rng: np.random.Generator, ctx: SelectionContext
    ) -> list[str]:
        """``d`` devices drawn without replacement, uniformly or by data size."""
        if self.sampling == "uniform":
            return _draw(devices, d, rng)
        if ctx.hint is None:
            raise FedgeError(
                "power_of_choice with sampling='data_size' needs the devices' example counts: "
                "give the coordinator a SelectionHint (FedAvg.selection_hint)"
            )
        sizes = np.array([ctx.hint.n_examples(x) for x in devices], dtype=float)
        d = min(d, int(np.count_nonzero(sizes)))
        if d == 0:
            return []
        chosen = rng.choice(len(devices), size=d, replace=False, p=sizes / sizes.sum())
        return [devices[i] for i in chosen]


def _rank_loss(loss: float) -> float:
    return -math.inf if math.isnan(loss) else loss


def query_losses(candidates: list[str], ctx: SelectionContext) -> dict[str, float]:
    """Ask each candidate for its local loss on the round's global model (``loss`` messages)."""
    if not candidates:
        return {}
    here, model = ctx.transport.node_id, ctx.payload["model"]
    asks = [Message(here, c, "loss", ctx.round, {"model": model}) for c in candidates]
    return {m.src: float(m.payload["loss"]) for m in ctx.transport.send(asks)}


def make_selector(
    name: str,
    params: Mapping[str, Any],
    clients_per_round: int,
    deadline_s: float | None,
) -> Selector:
    """Selector ``name`` with ``params``; an unknown name or parameter, a bad value, or a rule
    that cannot work with the federation's settings raises ConfigError naming the field."""
    factory = SELECTORS.get(name, "federation.selection")
    allowed = [f.name for f in fields(factory)]
    for key, value in params.items():
        if key not in allowed:
            choices = "one of " + ", ".join(allowed) if allowed else "no parameters"
            raise ConfigError(_param(key), value, f"a parameter of {name!r}: {choices}")
    selector = factory(**params)
    selector.check(clients_per_round, deadline_s)
    return selector

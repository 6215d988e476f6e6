"""The mechanisms of ``[privacy]`` at the node that aggregates device updates, and their
accounting with ``dp-accounting`` (see ``fedge.algorithms.privacy`` for what each means and
how the guarantee composes). Every object here is frozen; what changes between rounds (the
accounting events, the adaptive clip norm) lives in a memory dict the node owns."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedge.aggregation.pipeline import ServerPipeline
from fedge.aggregation.privacy import (
    ClipStage,
    NoisySumStage,
    geometric_clip_update,
    noisy_fraction,
    update_noise_multiplier,
    zero_aggregate,
)
from fedge.core.errors import ConfigError, FedgeError
from fedge.core.node import derive_seed
from fedge.core.update import ModelState, Update
from fedge.transforms.privacy import RELEASES

if TYPE_CHECKING:
    from fedge.algorithms.privacy import PrivacySettings

INSTALL_HINT = "pip install 'fedge[privacy]'"
SAMPLING_KINDS = {"random": "fixed", "poisson": "poisson"}
"""Selectors whose sampling an accountant can describe, and how."""


def _library() -> Any:
    try:
        import dp_accounting
    except ImportError:
        raise FedgeError(f"differential privacy needs dp-accounting: {INSTALL_HINT}") from None
    return dp_accounting


@dataclass(frozen=True)
class Sampling:
    """How a round's cohort is drawn: ``fixed`` (k of n without replacement) or ``poisson``."""

    kind: str
    rate: float = 0.0
    """Poisson inclusion probability q."""

    def cohort(self, population: int, k: int) -> float:
        """The fixed denominator: k, or the expected cohort q·n."""
        return float(k) if self.kind == "fixed" else self.rate * population

    def relation(self) -> Any:
        rel = _library().NeighboringRelation
        return rel.REPLACE_ONE if self.kind == "fixed" else rel.ADD_OR_REMOVE_ONE

    def event(self, population: int, k: int, inner: Any) -> Any:
        dp = _library()
        if self.kind == "fixed":
            return dp.SampledWithoutReplacementDpEvent(population, k, inner)
        return dp.PoissonSampledDpEvent(self.rate, inner)


def sampling_of(selection: str, params: Mapping[str, Any]) -> Sampling:
    """The sampling a selector declares; others cannot be accounted and are refused."""
    kind = SAMPLING_KINDS.get(selection)
    if kind is None:
        allowed = " | ".join(SAMPLING_KINDS) + " with central DP (uniform sampling an "
        raise ConfigError("federation.selection", selection, allowed + "accountant can describe)")
    return Sampling(kind, float(params.get("rate", 0.0)))


def make_accountant(name: str, relation: Any) -> Any:
    dp = _library()
    if name == "pld":
        return dp.pld.PLDAccountant(neighboring_relation=relation)
    return dp.rdp.RdpAccountant(neighboring_relation=relation)


def epsilon_of(
    events: Sequence[tuple[Any, int]], accountant: str, relation: Any, delta: float
) -> float:
    """ε at ``delta`` of the composed ``(event, count)`` pairs (0 when there are none).

    For small noise multipliers the RDP accountant cannot evaluate some low orders and warns
    through absl every call; it leaves them out, and ε over the other orders is still a
    valid bound, so those warnings are silenced here."""
    if not events:
        return 0.0
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        acc = make_accountant(accountant, relation)
        for event, count in events:
            acc.compose(event, count)
        return float(acc.get_epsilon(delta))
    finally:
        absl.setLevel(level)


def noise_stream(rng: np.random.Generator, memory: dict[str, Any]) -> np.random.Generator:
    """A generator for a round's DP noise, derived from the state ``rng`` is in (without
    drawing from it) and the node's count of noised rounds: the node's own draws (the next
    round's sampling) stay exactly those of the run without DP, so a DP run differs from its
    plain twin only by the noise."""
    index = int(memory.get("noised", 0))
    memory["noised"] = index + 1
    state = repr(rng.bit_generator.state)
    return np.random.default_rng(derive_seed("privacy-noise", index, state))


def _append(events: list[tuple[Any, int]], event: Any, count: int = 1) -> list[tuple[Any, int]]:
    """``events`` with ``count`` more of ``event`` (runs of one event are merged)."""
    if events and events[-1][0] == event:
        return [*events[:-1], (event, events[-1][1] + count)]
    return [*events, (event, count)]


@dataclass(frozen=True)
class PrivateRound:
    """What every mechanism's ``aggregate`` is handed for one round at its node: the node's
    pipeline, the model the updates start from, the updates, the node's generator and privacy
    memory, and the ``k`` of ``population`` devices its accounting describes."""

    pipeline: ServerPipeline
    reference: ModelState
    updates: Sequence[Update]
    rng: np.random.Generator
    memory: dict[str, Any]
    population: int
    k: int


@dataclass(frozen=True)
class CentralDP:
    """DP-FedAvg at one aggregating node; its state lives in the memory the node passes in
    (``events``, ``clip``, ``round_event``: the last round's event, used to predict)."""

    settings: PrivacySettings
    sampling: Sampling

    def count_std(self, population: int, k: int) -> float:
        if self.settings.clipped_count_stddev is not None:
            return self.settings.clipped_count_stddev
        return self.sampling.cohort(population, k) / 20.0

    def multipliers(self, population: int, k: int) -> tuple[float, float | None]:
        """(σ_Δ, σ_b) of the noise added: σ_b None without adaptive clipping."""
        sigma = self.settings.noise_multiplier
        if not self.settings.adaptive_clip:
            return sigma, None
        count_std = self.count_std(population, k)
        return update_noise_multiplier(sigma, count_std), count_std

    def round_event(self, population: int, k: int) -> Any:
        """The accountant's event of one round over ``k`` of ``population`` devices."""
        dp = _library()
        sigma_update, count_std = self.multipliers(population, k)
        scale = 0.5 if self.sampling.kind == "fixed" else 1.0
        inner = dp.GaussianDpEvent(sigma_update * scale)
        if count_std is not None:
            # centred bits: sensitivity 1 under replace-one, 1/2 under add/remove
            count_multiplier = count_std if self.sampling.kind == "fixed" else 2.0 * count_std
            inner = dp.ComposedDpEvent([inner, dp.GaussianDpEvent(count_multiplier)])
        return self.sampling.event(population, k, inner)

    def epsilon(self, events: Sequence[tuple[Any, int]]) -> float:
        s = self.settings
        if events and s.noise_multiplier == 0:
            return math.inf  # no noise: no guarantee (and the accountant would divide by 0)
        return epsilon_of(events, s.accountant, self.sampling.relation(), s.delta)

    def check(self, population: int, k: int, where: str = "") -> None:
        """Settings this cohort cannot work with, and an ε target one round already misses."""
        s = self.settings
        if s.adaptive_clip and not math.isfinite(self.multipliers(population, k)[0]):
            count_std = self.count_std(population, k)
            raise ConfigError(
                "privacy.clipped_count_stddev",
                s.clipped_count_stddev if s.clipped_count_stddev is not None else count_std,
                f"a value > noise_multiplier / 2 = {s.noise_multiplier / 2:g}{where} "
                "(adaptive clipping spends part of the budget on the count)",
            )
        if self.sampling.cohort(population, k) <= 0:
            raise FedgeError(f"central DP needs a non-empty expected cohort{where}")
        event = self.round_event(population, k)
        acc = make_accountant(s.accountant, self.sampling.relation())
        if not acc.supports(event):
            raise ConfigError(
                "privacy.accountant",
                s.accountant,
                "'rdp' (the PLD accountant supports only "
                "Poisson sampling without adaptive clipping)",
            )
        if s.max_epsilon is not None:
            first = self.epsilon([(event, 1)])
            if math.isinf(first):
                raise ConfigError(
                    "privacy.max_epsilon", s.max_epsilon, "unset with noise_multiplier = 0 "
                    "(without noise ε is infinite)",
                )  # fmt: skip
            if first > s.max_epsilon:
                raise ConfigError(
                    "privacy.max_epsilon",
                    s.max_epsilon,
                    f"a value >= {first:.4g}, the ε of a single round{where} (or more noise: "
                    "privacy.noise_multiplier)",
                )

    def admit(self, memory: Mapping[str, Any], population: int, k: int) -> None:
        """Refuse a round that would take ε past ``max_epsilon`` (the run normally stops
        before, on ``epsilon_next``; this holds if the population changed)."""
        limit = self.settings.max_epsilon
        if limit is None:
            return
        after = self.epsilon(
            _append(list(memory.get("events", [])), self.round_event(population, k))
        )
        if after > limit:
            raise FedgeError(
                f"privacy.max_epsilon: the next round would reach ε = {after:.4g} > {limit:g}"
            )

    def aggregate(self, rnd: PrivateRound) -> tuple[ModelState, dict[str, float]]:
        """The noisy model of one round, with the round's event recorded in ``memory``."""
        s, memory = self.settings, rnd.memory
        clip = float(memory.get("clip", s.clip))
        cohort = self.sampling.cohort(rnd.population, rnd.k)
        sigma_update, count_std = self.multipliers(rnd.population, rnd.k)
        clipper = ClipStage(clip)
        noise = NoisySumStage(sigma_update * clip, cohort)
        rng = noise_stream(rnd.rng, memory)
        state = rnd.pipeline.run(
            rnd.reference, rnd.updates, rng, prepare=[clipper], finalize=[noise],
            empty=zero_aggregate(rnd.reference),
        )  # fmt: skip
        self.record(rnd)
        metrics = {"clip_norm": clip, "noise_std": sigma_update * clip / cohort}
        if count_std is not None:
            fraction = noisy_fraction(clipper.unclipped, len(rnd.updates), count_std, cohort, rng)
            memory["clip"] = geometric_clip_update(
                clip, fraction, s.target_quantile, s.clip_learning_rate
            )
            metrics["unclipped_fraction"] = fraction
        return state, metrics

    def record(self, rnd: PrivateRound) -> None:
        """Add the round's event to the events in ``rnd.memory`` and keep it to predict."""
        event = self.round_event(rnd.population, rnd.k)
        rnd.memory["events"] = _append(list(rnd.memory.get("events", [])), event)
        rnd.memory["round_event"] = event

    def edge_weight(self, memory: Mapping[str, Any]) -> float | None:
        """None: an edge's model keeps its own weight (the examples behind it)."""
        return None

    def metrics(self, memory: Mapping[str, Any], upcoming: int) -> dict[str, float]:
        """ε so far and after ``upcoming`` more rounds like the last one."""
        events = list(memory.get("events", []))
        out = {"epsilon": self.epsilon(events)}
        last = memory.get("round_event")
        if last is not None:
            out["epsilon_next"] = self.epsilon(_append(events, last, upcoming))
        return out


@dataclass(frozen=True)
class LocalDP:
    """Accounting of local DP at the node that receives the devices' noisy updates: the
    device that released most (``dp_releases`` on its updates) sets ε."""

    settings: PrivacySettings

    def edge_weight(self, memory: Mapping[str, Any]) -> float | None:
        return None

    def release_event(self) -> Any:
        return _library().GaussianDpEvent(self.settings.noise_multiplier / 2.0)

    def epsilon(self, releases: int) -> float:
        s = self.settings
        if releases and s.noise_multiplier == 0:
            return math.inf
        events = [(self.release_event(), releases)] if releases else []
        return epsilon_of(events, s.accountant, _library().NeighboringRelation.REPLACE_ONE, s.delta)

    def check(self, population: int, k: int, where: str = "") -> None:
        limit = self.settings.max_epsilon
        if limit is not None and math.isinf(self.epsilon(1)):
            raise ConfigError(
                "privacy.max_epsilon", limit, "unset with noise_multiplier = 0 (without noise "
                "ε is infinite)",
            )  # fmt: skip
        if limit is not None and self.epsilon(1) > limit:
            raise ConfigError(
                "privacy.max_epsilon",
                limit,
                f"a value >= {self.epsilon(1):.4g}, the ε of one local release (or more "
                "noise: privacy.noise_multiplier)",
            )

    def admit(self, memory: Mapping[str, Any], population: int, k: int) -> None:
        limit = self.settings.max_epsilon
        after = self.epsilon(int(memory.get("releases", 0)) + 1)
        if limit is not None and after > limit:
            raise FedgeError(
                f"privacy.max_epsilon: a device's next release would reach ε = {after:.4g}"
            )

    def aggregate(self, rnd: PrivateRound) -> tuple[ModelState, dict[str, float]]:
        counts = [int(u.metrics.get(RELEASES, 0)) for u in rnd.updates]
        rnd.memory["releases"] = max([int(rnd.memory.get("releases", 0)), *counts])
        return rnd.pipeline.run(rnd.reference, rnd.updates, rnd.rng), {}

    def metrics(self, memory: Mapping[str, Any], upcoming: int) -> dict[str, float]:
        releases = int(memory.get("releases", 0))
        return {
            "epsilon": self.epsilon(releases),
            "epsilon_next": self.epsilon(releases + upcoming),
        }


@dataclass(frozen=True)
class EdgeClip:
    """An edge under cloud noise (hierarchical FL, ``noise_at = "cloud"``): it clips its
    devices' deltas and sums them over its fixed cohort ``k_e``, without noise; its model
    goes up with weight ``k_e``, so the cloud's weighted sum is the sum of every clipped
    device delta (one device moves it by at most 2·clip)."""

    settings: PrivacySettings
    sampling: Sampling

    def admit(self, memory: Mapping[str, Any], population: int, k: int) -> None:
        """The cloud keeps the budget."""

    def aggregate(self, rnd: PrivateRound) -> tuple[ModelState, dict[str, float]]:
        cohort = self.sampling.cohort(rnd.population, rnd.k)
        rnd.memory["cohort"] = cohort
        state = rnd.pipeline.run(
            rnd.reference,
            rnd.updates,
            rnd.rng,
            prepare=[ClipStage(self.settings.clip)],
            finalize=[NoisySumStage(0.0, cohort)],
            empty=zero_aggregate(rnd.reference),
        )
        return state, {}

    def metrics(self, memory: Mapping[str, Any], upcoming: int) -> dict[str, float]:
        return {}

    def edge_weight(self, memory: Mapping[str, Any]) -> float | None:
        """The weight of the edge's model at the cloud: its fixed cohort."""
        return float(memory["cohort"]) if "cohort" in memory else None


@dataclass(frozen=True)
class CloudDP(CentralDP):
    """The cloud of hierarchical FL under cloud noise: N(0, (σ·clip)²) on the weighted sum of
    the edges' models (``EdgeClip``), divided by Σ k_e over the edges (fixed).

    Accounting: the cohorts are drawn per edge (stratified); a device is in one stratum, so a
    round is the subsampled Gaussian of its edge's sampling, and the accountant is given the
    stratum with the largest inclusion probability k_e / n_e (RDP grows with it), which
    bounds every device's ε."""

    strata: tuple[tuple[int, int], ...] = ()
    """(devices attached, cohort size) of every edge with devices."""

    def worst(self) -> tuple[int, int]:
        return max(self.strata, key=lambda nk: nk[1] / nk[0])

    def round_event(self, population: int, k: int) -> Any:
        return super().round_event(*self.worst())

    def check(self, population: int, k: int, where: str = "") -> None:
        if not self.strata:
            raise FedgeError("central DP at the cloud needs edges with devices")
        super().check(*self.worst(), where)

    def admit(self, memory: Mapping[str, Any], population: int, k: int) -> None:
        super().admit(memory, *self.worst())

    def denominator(self) -> float:
        return sum(self.sampling.cohort(n, k) for n, k in self.strata)

    def aggregate(self, rnd: PrivateRound) -> tuple[ModelState, dict[str, float]]:
        std = self.settings.noise_multiplier * self.settings.clip
        noise = NoisySumStage(std, self.denominator())
        empty = zero_aggregate(rnd.reference)
        noisy = noise_stream(rnd.rng, rnd.memory)
        state = rnd.pipeline.run(rnd.reference, rnd.updates, noisy, finalize=[noise], empty=empty)
        self.record(rnd)
        return state, {"clip_norm": self.settings.clip, "noise_std": std / self.denominator()}

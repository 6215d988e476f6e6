"""``[privacy]``: client-level differential privacy for the server-based algorithms, and its
accounting with Google's ``dp-accounting`` library.

Mechanisms (``privacy.mechanism``):

- ``central`` — DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
  Language Models"): every device's update (its delta from the model it received) is clipped
  to L2 norm ``clip`` at the aggregator, Gaussian noise of std ``noise_multiplier·clip`` is
  added to the sum, and the sum is divided by the *fixed* cohort size (k for fixed-size
  sampling, ``rate·n`` for Poisson), not by the number of updates that arrived.
  ``adaptive_clip`` lets the clip norm follow the ``target_quantile`` of the update norms
  (Andrew et al. 2021): ``C ← C·exp(−η(b̃ − γ))`` with b̃ the noisy share of unclipped updates;
  the count's noise (std ``clipped_count_stddev``, default cohort/20) is paid for by raising
  the updates' multiplier to σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2), and both are accounted.
- ``local`` — every device clips and noises its own update before it leaves
  (``fedge.transforms.privacy``); accounted per device, with no amplification by sampling.

Where central noise is added (``privacy.noise_at``): at the cloud for the FedAvg family; at
every edge for hierarchical FL, multi-server and single-server FL. Per-edge noise gives
each edge's cohort its own DP-FedAvg, accounted by the edge over its own population (the
devices attached to it: static mobility is required, so that each device belongs to one
edge, and a device's guarantee is its edge's). Whatever happens after an edge's noisy
aggregate — the cloud's average of edge models, the MS-FL exchange with peers — is
post-processing and costs no privacy. The reported ``epsilon`` is the largest over the
edges, i.e. the guarantee every device has. It is a guarantee against whoever sees the
edges' models (the cloud, other edges, the final model); the edge itself sees the raw
updates of its devices, as the cloud does in the FedAvg family.

Accounting: one event per aggregation round, with the sampling declared by the selector:
``random`` (k of n uniformly without replacement) is ``SampledWithoutReplacementDpEvent``
under the replace-one relation, where one device's clipped update moves the sum by up to
2·clip, so the accountant sees noise multiplier σ/2; ``poisson`` (each device independently
with probability ``rate``) is ``PoissonSampledDpEvent`` under add/remove-one, multiplier σ.
Selectors that are neither (deadline_aware, power_of_choice) are refused. The RDP
accountant supports both; the PLD accountant only Poisson sampling without adaptive
clipping. ``epsilon`` (for ``delta``) is reported every round, with ``epsilon_next``, the
value after one more round, by which the run stops before it would exceed
``max_epsilon``. The events live in the aggregating node's memory (the coordinator's, or the
edge's node state), so checkpoints carry them and a resumed run reports the same ε.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

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
from fedge.core.settings import Section
from fedge.core.update import ModelState, Update
from fedge.transforms.privacy import RELEASES, LocalGaussian

INSTALL_HINT = "pip install 'fedge[privacy]'"
SAMPLING_KINDS = {"random": "fixed", "poisson": "poisson"}
"""Selectors whose sampling an accountant can describe, and how."""


class PrivacySettings(Section):
    """Client-level differential privacy (off unless ``mechanism`` is set)."""

    section: ClassVar[str] = "privacy"

    mechanism: Literal["none", "central", "local"] = "none"
    noise_multiplier: float = Field(1.0, ge=0, description="σ: noise std over the clip norm")
    clip: float = Field(1.0, gt=0, description="L2 clip norm C (initial C when adaptive)")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of the reported (ε, δ)")
    max_epsilon: float | None = Field(None, gt=0, description="stop before ε would exceed it")
    accountant: Literal["rdp", "pld"] = "rdp"
    noise_at: Literal["cloud", "edge"] | None = Field(
        None, description="central noise at the cloud or at every edge; None: the algorithm's"
    )
    adaptive_clip: bool = False
    target_quantile: float = Field(0.5, gt=0, lt=1, description="γ of adaptive clipping")
    clip_learning_rate: float = Field(0.2, gt=0, description="η_C of adaptive clipping")
    clipped_count_stddev: float | None = Field(
        None, gt=0, description="σ_b of the unclipped count; None: expected cohort / 20"
    )

    @model_validator(mode="after")
    def _check(self) -> PrivacySettings:
        if self.mechanism == "none":
            for name in ("max_epsilon", "noise_at", "clipped_count_stddev"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"privacy.{name}", getattr(self, name), "unset with mechanism = 'none'"
                    )
            if self.adaptive_clip:
                raise ConfigError("privacy.adaptive_clip", True, "false with mechanism = 'none'")
        if self.mechanism == "local" and self.adaptive_clip:
            raise ConfigError("privacy.adaptive_clip", True, "false with mechanism = 'local'")
        return self

    @property
    def enabled(self) -> bool:
        return self.mechanism != "none"


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
    """ε at ``delta`` of the composed ``(event, count)`` pairs (0 when there are none)."""
    if not events:
        return 0.0
    acc = make_accountant(accountant, relation)
    for event, count in events:
        acc.compose(event, count)
    return float(acc.get_epsilon(delta))


def _append(events: list[tuple[Any, int]], event: Any, count: int = 1) -> list[tuple[Any, int]]:
    """``events`` with ``count`` more of ``event`` (runs of one event are merged)."""
    if events and events[-1][0] == event:
        return [*events[:-1], (event, events[-1][1] + count)]
    return [*events, (event, count)]


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

    def aggregate(
        self,
        pipeline: ServerPipeline,
        reference: ModelState,
        updates: Sequence[Update],
        rng: np.random.Generator,
        memory: dict[str, Any],
        population: int,
        k: int,
    ) -> tuple[ModelState, dict[str, float]]:
        """The noisy model of one round, with the round's event recorded in ``memory``."""
        s = self.settings
        clip = float(memory.get("clip", s.clip))
        cohort = self.sampling.cohort(population, k)
        sigma_update, count_std = self.multipliers(population, k)
        clipper = ClipStage(clip)
        noise = NoisySumStage(sigma_update * clip, cohort)
        state = pipeline.run(
            reference, updates, rng, prepare=[clipper], finalize=[noise],
            empty=zero_aggregate(reference),
        )  # fmt: skip
        event = self.round_event(population, k)
        memory["events"] = _append(list(memory.get("events", [])), event)
        memory["round_event"] = event
        metrics = {"clip_norm": clip, "noise_std": sigma_update * clip / cohort}
        if count_std is not None:
            fraction = noisy_fraction(clipper.unclipped, len(updates), count_std, cohort, rng)
            memory["clip"] = geometric_clip_update(
                clip, fraction, s.target_quantile, s.clip_learning_rate
            )
            metrics["unclipped_fraction"] = fraction
        return state, metrics

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

    def release_event(self) -> Any:
        return _library().GaussianDpEvent(self.settings.noise_multiplier / 2.0)

    def epsilon(self, releases: int) -> float:
        s = self.settings
        events = [(self.release_event(), releases)] if releases else []
        return epsilon_of(events, s.accountant, _library().NeighboringRelation.REPLACE_ONE, s.delta)

    def check(self, population: int, k: int, where: str = "") -> None:
        limit = self.settings.max_epsilon
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

    def aggregate(
        self,
        pipeline: ServerPipeline,
        reference: ModelState,
        updates: Sequence[Update],
        rng: np.random.Generator,
        memory: dict[str, Any],
        population: int,
        k: int,
    ) -> tuple[ModelState, dict[str, float]]:
        counts = [int(u.metrics.get(RELEASES, 0)) for u in updates]
        memory["releases"] = max([int(memory.get("releases", 0)), *counts])
        return pipeline.run(reference, updates, rng), {}

    def metrics(self, memory: Mapping[str, Any], upcoming: int) -> dict[str, float]:
        releases = int(memory.get("releases", 0))
        return {
            "epsilon": self.epsilon(releases),
            "epsilon_next": self.epsilon(releases + upcoming),
        }


Privacy = CentralDP | LocalDP


def make_privacy(settings: PrivacySettings, selection: str, params: Mapping[str, Any]) -> Privacy:
    """The accounting object of a node that aggregates device updates."""
    if settings.mechanism == "local":
        return LocalDP(settings)
    return CentralDP(settings, sampling_of(selection, params))


def local_transform(settings: PrivacySettings) -> LocalGaussian:
    """The device-side transform of local DP."""
    return LocalGaussian(settings.clip, settings.noise_multiplier)


def edge_metrics(reported: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The cloud's view of per-edge privacy: the largest ε (and ε after one more round)."""
    out: dict[str, float] = {}
    for key in ("epsilon", "epsilon_next"):
        values = [m[key] for m in reported if key in m]
        if values:
            out[key] = max(values)
    return out


def noise_at(settings: PrivacySettings, seats: Sequence[str]) -> str:
    """Where central noise goes: the configured tier, or the algorithm's default."""
    return settings.noise_at or seats[0]


def check_privacy(config: Any, algorithm: str, seats: Sequence[str]) -> None:
    """Rules across sections for DP, before any work: the algorithm has a seat for it, the
    aggregator is the mean, the sampling can be accounted, per-edge devices stay put."""
    p: PrivacySettings = config.privacy
    if not p.enabled:
        return
    if not seats:
        raise ConfigError(
            "privacy.mechanism", p.mechanism, f"'none' for algorithm {algorithm!r} (differential "
            "privacy: the FedAvg family, hierarchical, msfl, single_server)",
        )  # fmt: skip
    if p.mechanism == "local":
        if p.noise_at is not None:
            raise ConfigError("privacy.noise_at", p.noise_at, "unset with mechanism = 'local'")
        return
    where = noise_at(p, seats)
    if where not in seats:
        allowed = " | ".join(repr(t) for t in seats) + f" for algorithm {algorithm!r}"
        raise ConfigError("privacy.noise_at", where, allowed)
    fed = config.federation
    if fed.aggregator != "mean":
        raise ConfigError(
            "federation.aggregator", fed.aggregator, "'mean' with central DP (the noisy sum of "
            "clipped updates replaces the aggregate)",
        )  # fmt: skip
    sampling_of(fed.selection, fed.selection_params)
    if where == "edge" and config.system.mobility != "static":
        raise ConfigError(
            "system.mobility", config.system.mobility, "'static' with central DP at the edges "
            "(per-edge accounting needs each device to stay with one edge)",
        )  # fmt: skip


def cohorts(config: Any, system: Any, where: str) -> list[tuple[int, int, str]]:
    """(population, cohort size, where) of every node that aggregates device updates."""
    devices = system.ids("device")
    fed = config.federation
    if where == "cloud":
        n = len(devices)
        return [(n, min(fed.clients_per_round, n), "")]
    out = []
    for edge in system.ids("edge"):
        n = sum(1 for d in devices if system.attachment(d, 0.0) == edge)
        if n:
            out.append((n, min(fed.clients_per_edge or n, n), f" at edge {edge}"))
    return out


def check_budget(config: Any, seats: Sequence[str], system: Any) -> None:
    """Before any round: each aggregating node's cohort works with the settings and one
    round does not already exceed ``max_epsilon`` (ConfigError names the field)."""
    p: PrivacySettings = config.privacy
    if not p.enabled or not seats:
        return
    fed = config.federation
    where = noise_at(p, seats)
    privacy = make_privacy(p, fed.selection, fed.selection_params)
    for population, k, label in cohorts(config, system, where):
        privacy.check(population, k, label)


__all__ = [
    "CentralDP",
    "LocalDP",
    "Privacy",
    "PrivacySettings",
    "Sampling",
    "check_budget",
    "check_privacy",
    "edge_metrics",
    "epsilon_of",
    "local_transform",
    "make_privacy",
    "sampling_of",
]

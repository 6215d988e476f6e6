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
every edge (default) or at the cloud for hierarchical FL; at every edge for multi-server and
single-server FL.

*Noise at the cloud of hierarchical FL*: each edge clips its devices' deltas and sums them
over its fixed cohort k_e without noise, its model goes up with weight k_e, and the cloud
adds N(0, (σ·clip)²) to the weighted sum — the sum of every clipped device delta of the
round — and divides by Σ k_e. One cloud round must hold one edge round (``kappa2 = 1``) so
that a device contributes once. The cohorts are drawn per edge (stratified sampling); a
device sits in one stratum, so the round is the subsampled Gaussian of its own edge's
sampling, and the accountant is given the edge with the largest inclusion probability
k_e / n_e, which bounds every device's ε. The edges are trusted with raw updates.

*Noise at every edge*: each edge runs its own DP-FedAvg on its own cohort (one event per
edge round, so ``kappa2`` a cloud round), accounted by the edge over its own population (the
devices attached to it). Static mobility is required, so that each device belongs to one
edge: the edges hold disjoint data (parallel composition), and a device's guarantee is its
own edge's. Whatever happens after an edge's noisy
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

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from fedge.algorithms.dp import (
    CentralDP,
    CloudDP,
    EdgeClip,
    LocalDP,
    PrivateRound,
    Sampling,
    epsilon_of,
    sampling_of,
)
from fedge.core.errors import ConfigError
from fedge.core.settings import Section
from fedge.transforms.privacy import LocalGaussian

MECHANISMS = (
    ("central", "DP-FedAvg: clip every update, Gaussian noise on the sum at the aggregator"),
    ("local", "every device clips and noises its own update before it leaves"),
)
"""``privacy.mechanism`` values besides "none" (``fedge list privacy``)."""


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
        if self.adaptive_clip and self.noise_multiplier == 0:
            raise ConfigError("privacy.noise_multiplier", 0.0, "a number > 0 with adaptive_clip")
        if self.mechanism == "local" and self.adaptive_clip:
            raise ConfigError("privacy.adaptive_clip", True, "false with mechanism = 'local'")
        return self

    @property
    def enabled(self) -> bool:
        return self.mechanism != "none"


Privacy = CentralDP | LocalDP | EdgeClip

Tier = Literal["cloud", "edge", "edges"]
"""The aggregating node a mechanism is for: the cloud or an edge over devices, or the cloud
over the edges (hierarchical FL)."""


def make_privacy(
    settings: PrivacySettings,
    seats: Sequence[str],
    federation: Any,
    tier: Tier,
    strata: Sequence[tuple[int, int]] = (),
) -> Privacy | None:
    """The mechanism of the node at ``tier`` for an algorithm whose noise seats are ``seats``
    (None: this node has no part in it). ``strata``: (devices, cohort) per edge, for the
    cloud over edges."""
    if not settings.enabled:
        return None
    at = noise_at(settings, seats)
    central = settings.mechanism == "central"
    if tier == "edges":
        if not (central and at == "cloud"):
            return None
        sampling = sampling_of(federation.selection, federation.selection_params)
        return CloudDP(settings, sampling, tuple(strata))
    if not central:
        return LocalDP(settings)
    sampling = sampling_of(federation.selection, federation.selection_params)
    return CentralDP(settings, sampling) if at == tier else EdgeClip(settings, sampling)


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
    if "edge" in seats:
        _check_edges(config, where)


def _check_edges(config: Any, where: str) -> None:
    """Central DP with edge servers: devices stay with one edge; noise at the cloud of
    hierarchical FL needs one edge round per cloud round and a fixed clip norm."""
    p: PrivacySettings = config.privacy
    fed = config.federation
    if config.system.mobility != "static":
        raise ConfigError(
            "system.mobility", config.system.mobility, "'static' with central DP and edge "
            "servers (the accounting needs each device to stay with one edge)",
        )  # fmt: skip
    if where == "cloud":
        if fed.kappa2 != 1:
            raise ConfigError(
                "federation.kappa2", fed.kappa2, "1 with central DP noise at the cloud of "
                "hierarchical FL (a device's update reaches the cloud once per round)",
            )  # fmt: skip
        if p.adaptive_clip:
            raise ConfigError(
                "privacy.adaptive_clip", True, "false with noise at the cloud of hierarchical "
                "FL (use noise_at = 'edge')",
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


def strata(config: Any, system: Any) -> list[tuple[int, int]]:
    """(devices attached, cohort size) of every edge with devices."""
    return [(n, k) for n, k, _ in cohorts(config, system, "edge")]


def check_budget(config: Any, seats: Sequence[str], system: Any) -> None:
    """Before any round: each aggregating node's cohort works with the settings and one
    round does not already exceed ``max_epsilon`` (ConfigError names the field)."""
    p: PrivacySettings = config.privacy
    if not p.enabled or not seats:
        return
    fed, where = config.federation, noise_at(p, seats)
    if p.mechanism == "central" and where == "cloud" and "edge" in seats:
        cloud = make_privacy(p, seats, fed, "edges", strata(config, system))
        assert isinstance(cloud, CloudDP)
        cloud.check(0, 0, "")
        return
    privacy = make_privacy(p, seats, fed, "edge" if where == "edge" else "cloud")
    assert isinstance(privacy, CentralDP | LocalDP)
    for population, k, label in cohorts(config, system, where):
        privacy.check(population, k, label)


__all__ = [
    "MECHANISMS",
    "CentralDP",
    "CloudDP",
    "EdgeClip",
    "LocalDP",
    "Privacy",
    "PrivacySettings",
    "PrivateRound",
    "Sampling",
    "check_budget",
    "check_privacy",
    "edge_metrics",
    "epsilon_of",
    "local_transform",
    "make_privacy",
    "sampling_of",
    "strata",
]

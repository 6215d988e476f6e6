"""``[secure_aggregation]``: the settings of secure (and homomorphic) aggregation and the
checks that need the cohort and the data.

This module imports no cryptography, so a config can be read without the ``secure`` extra;
the protocol itself is ``fedge.algorithms.secure``.

Choices stated here:

- **Threshold.** ``threshold`` is the share t/m of a device's m share-holders (the whole
  cohort for SecAgg, its neighbourhood and itself for SecAgg+) needed to rebuild its secrets,
  t = ceil(threshold · m). The honest-majority floor is t > m/2 (``threshold`` > 0.5): no
  minority of colluding holders can rebuild a secret. The default 2/3 rebuilds when up to a
  third of the holders drop out after masking (Bonawitz et al.). A threshold above 1 would
  need more holders than the cohort has.
- **Fixed point.** Every entry of a device's update is clipped to [-clip, clip], multiplied
  by the device's weight (its sample count) and by 2^scale_bits, rounded and reduced mod
  2^bits. Overflow is impossible when cohort · max_weight · clip · 2^scale_bits < 2^(bits-1);
  ``scale_bits`` unset takes the largest value that satisfies it, and at least
  ``MIN_SCALE_BITS`` fractional bits are required.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import Field, model_validator

from fedge.core.errors import ConfigError
from fedge.core.settings import Section
from fedge.core.transport import Transport
from fedge.core.update import ModelState, Update

if TYPE_CHECKING:
    from fedge.aggregation.pipeline import Aggregate

MIN_SCALE_BITS = 8
"""Fewest fractional bits of the fixed-point encoding (a step of 2^-8 of a weighted entry)."""


class SecureAggregationSettings(Section):
    """Secure aggregation (Bonawitz et al. 2017; SecAgg+ of Bell et al. 2020) or Paillier
    homomorphic aggregation of the devices' updates at every aggregating server."""

    section: ClassVar[str] = "secure_aggregation"

    enabled: bool = False
    mode: Literal["secagg", "secagg+", "paillier"] = Field(
        "secagg",
        description="secagg: every pair of devices masks; secagg+: a random graph of "
        "O(log n) neighbours; paillier: additively homomorphic encryption (phe)",
    )
    threshold: float = Field(
        2 / 3,
        description="share of a device's share-holders needed to unmask; in (0.5, 1]",
    )
    degree: int = Field(
        0, ge=0, description="secagg+: neighbours per device (even); 0: the even number >= 2·log2 n"
    )
    bits: int = Field(32, ge=8, le=64, description="the ring is Z_(2^bits)")
    scale_bits: int | None = Field(
        None, ge=0, description="fractional bits; None: the most that cannot overflow"
    )
    clip: float = Field(8.0, ge=1.0, description="each update entry is clipped to [-clip, clip]")
    max_weight: float | None = Field(
        None, gt=0, description="largest device weight (samples); None: the largest device's"
    )
    dropout_after_masking: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of the devices that sent a masked input and then fail to answer "
        "the unmasking stage (simulated dropouts)",
    )
    key_bits: int = Field(
        2048, ge=512, description="paillier: bits of the public modulus n (phe's default 2048)"
    )

    @model_validator(mode="after")
    def _check(self) -> SecureAggregationSettings:
        if self.threshold <= 0.5:
            raise ConfigError(
                "secure_aggregation.threshold",
                self.threshold,
                "a share of the cohort in (0.5, 1]: the honest-majority floor is more than "
                "half of a device's share-holders",
            )
        if self.threshold > 1:
            raise ConfigError(
                "secure_aggregation.threshold",
                self.threshold,
                "a share of the cohort in (0.5, 1]: a threshold above 1 is larger than the cohort",
            )
        if self.degree % 2:
            raise ConfigError(
                "secure_aggregation.degree", self.degree, "an even number >= 2, or 0 (automatic)"
            )
        if self.dropout_after_masking and self.mode == "paillier":
            raise ConfigError(
                "secure_aggregation.dropout_after_masking",
                self.dropout_after_masking,
                "0 for mode 'paillier' (it has no unmasking stage)",
            )
        if self.degree and self.mode != "secagg+":
            raise ConfigError(
                "secure_aggregation.degree", self.degree, f"0 for mode {self.mode!r} (secagg+ only)"
            )
        return self


@dataclass(frozen=True)
class SecureRequest:
    """One round's call into a secure protocol: the server's transport, the devices chosen,
    the payload of their train request, the model their deltas start from, the round and the
    deadline for the devices' replies."""

    transport: Transport
    chosen: Sequence[str]
    payload: Mapping[str, Any]
    reference: ModelState
    r: int
    deadline_s: float | None


class SecureRound(Protocol):
    """What a FedAvg round calls in place of collect-and-average: the server side of secure
    aggregation (``fedge.algorithms.secure``) or of homomorphic aggregation
    (``fedge.algorithms.homomorphic``)."""

    def run(self, req: SecureRequest) -> tuple[Aggregate, Update, dict[str, float]]:
        """The protocol over ``req.chosen``: the mean delta, a summary update (Σ w, mean loss)
        and the protocol's metrics."""
        ...

    def empty_metrics(self) -> dict[str, float]:
        """The protocol's metrics of a round without devices."""
        ...


def threshold_of(settings: SecureAggregationSettings, holders: int) -> int:
    """t for ``holders`` share-holders: ceil(threshold · holders), at least 2 when there are
    two or more (a single share would be the secret itself)."""
    return max(min(2, holders), math.ceil(settings.threshold * holders - 1e-9))


def scale_bits_for(settings: SecureAggregationSettings, cohort: int, max_weight: float) -> int:
    """The fixed point's fractional bits for ``cohort`` devices of weight <= ``max_weight``;
    ConfigError naming ``secure_aggregation.bits`` when the ring is too small."""
    from fedge.aggregation.secagg import capacity_ok, max_scale_bits

    bits, clip = settings.bits, settings.clip
    if settings.scale_bits is not None:
        if capacity_ok(bits, settings.scale_bits, cohort, max_weight, clip):
            return settings.scale_bits
        need = bits + settings.scale_bits - max_scale_bits(bits, cohort, max_weight, clip)
        raise ConfigError(
            "secure_aggregation.bits",
            bits,
            f">= {need} for a cohort of {cohort} devices with max_weight {max_weight:g}, clip "
            f"{clip:g} and scale_bits {settings.scale_bits} (cohort·max_weight·clip·"
            "2^scale_bits must stay below 2^(bits-1)), or a smaller scale_bits",
        )
    scale = max_scale_bits(bits, cohort, max_weight, clip)
    if scale < MIN_SCALE_BITS:
        need = bits + MIN_SCALE_BITS - scale
        raise ConfigError(
            "secure_aggregation.bits",
            bits,
            f">= {min(need, 64)} for a cohort of {cohort} devices with max_weight "
            f"{max_weight:g} and clip {clip:g} (at least {MIN_SCALE_BITS} fractional bits "
            "without overflow)" + ("; or a smaller clip or max_weight" if need > 64 else ""),
        )
    return scale


def check_secure(config: Any, supported: bool, edges: bool) -> None:
    """Rules across sections, before any data is loaded: an algorithm that can run it, the
    plain weighted mean (the server learns only the sum), no handover redirects."""
    s: SecureAggregationSettings = config.secure_aggregation
    if not s.enabled:
        return
    if not supported:
        raise ConfigError(
            "secure_aggregation.enabled",
            True,
            f"false for algorithm {config.algorithm!r} (secure aggregation runs where a "
            "server averages device updates: fedavg and its family, hierarchical, msfl, "
            "single_server)",
        )
    if config.federation.aggregator != "mean":
        raise ConfigError(
            "federation.aggregator",
            config.federation.aggregator,
            "'mean' with secure_aggregation.enabled (the server learns only the weighted sum)",
        )
    if config.privacy.mechanism != "none":
        raise ConfigError(
            "privacy.mechanism",
            config.privacy.mechanism,
            "'none' with secure_aggregation.enabled (DP accounting and noise need the "
            "per-device updates or releases that secure aggregation hides from the server)",
        )
    if config.defence.norm_bound is not None or config.defence.detection != "none":
        raise ConfigError(
            "defence",
            "norm_bound / detection",
            "neither with secure_aggregation.enabled (a defence inspects each device's update; "
            "the server sees only their sum)",
        )
    if edges and config.system.mobility != "static" and config.federation.handover:
        raise ConfigError(
            "federation.handover",
            True,
            "false with secure_aggregation.enabled and moving devices (a masked update means "
            "nothing to another edge; a device that moves away is recovered as a dropout)",
        )

"""Client-level differential privacy at an aggregating node: clipping, Gaussian noise and the
adaptive clip norm (DP-FedAvg, McMahan et al. 2018; Andrew et al. 2021).

The order inside the server pipeline (``ServerPipeline.run(..., prepare=, finalize=)``):

1. *prepare*: the pipeline's own prepare has turned every update into its delta from the
   model the node sent out (a compressed update is already decompressed: its state *is* the
   decoded data), then ``ClipStage`` scales each delta to L2 norm at most ``clip`` (an update
   at or below the norm is left untouched) and gives it weight 1 — example-count weights
   would let one device's contribution exceed ``clip``.
2. *aggregate*: the configured aggregator (``mean``) runs as usual.
3. *finalize*: ``NoisySumStage`` replaces the aggregate with ``(Σ clipped deltas + N(0,
   std²·I)) / denominator``. The denominator is fixed before the round (the cohort size the
   selector asks for, or its expectation ``q·n`` under Poisson sampling), never the number of
   updates that arrived: dividing by the realised count would make the sensitivity depend on
   who answered. Integer buffers are not noised (they take the aggregator's value).

Noise is drawn with a torch generator seeded from the node's round generator, so a run is
reproducible and the stages keep no state: what changes between rounds (the clip norm, the
accounting events) lives in a memory dict owned by the node (see
``fedge.algorithms.privacy``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedge.aggregation.pipeline import Aggregate
from fedge.core.noise import clip_state, gaussian_like, l2_norm, torch_generator
from fedge.core.update import ModelState, Update, delta


@dataclass
class ClipStage:
    """Prepare stage: every update as a delta clipped to ``clip``, with weight 1; it records
    how many updates were at or below the norm (adaptive clipping's count)."""

    clip: float
    unclipped: int = 0
    norms: list[float] = field(default_factory=list)

    def prepare(
        self, updates: list[Update], reference: ModelState, rng: np.random.Generator
    ) -> list[Update]:
        out = []
        for u in updates:
            d = u.state if u.kind == "delta" else delta(u.state, reference)
            clipped, norm = clip_state(d, self.clip)
            self.norms.append(norm)
            self.unclipped += int(norm <= self.clip)
            out.append(Update(clipped, 1.0, "delta", u.metrics, u.work, u.origin, u.via, u.round))
        return out


@dataclass(frozen=True)
class NoisySumStage:
    """Finalize stage: ``(Σ w·Δ + N(0, std²)) / denominator`` as the mean delta (an update
    that is a state counts as its delta from the reference)."""

    std: float
    denominator: float

    def finalize(
        self, aggregate: Aggregate, updates: Sequence[Update], rng: np.random.Generator
    ) -> Aggregate:
        return Aggregate(aggregate.reference, self.noisy_mean(aggregate, updates, rng), "delta")

    def noisy_mean(
        self, aggregate: Aggregate, updates: Sequence[Update], rng: np.random.Generator
    ) -> ModelState:
        reference = aggregate.reference
        noise = gaussian_like(reference, self.std, torch_generator(rng))
        out: ModelState = {}
        for key, base in reference.items():
            if not base.is_floating_point():
                out[key] = aggregate.result[key] if updates else base.clone()
                continue
            total = noise[key]
            for u in updates:
                d = u.state[key].to(torch.float64)
                if u.kind == "state":  # a model (an edge's), not yet its delta
                    d = d - base.to(torch.float64)
                total = total + u.weight * d
            out[key] = total / self.denominator
        return out


def zero_aggregate(reference: ModelState) -> Aggregate:
    """The aggregate of no updates (a zero mean delta), which the noise stage still noises:
    a round in which nobody answered must look like any other round."""
    zeros = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in reference.items()}
    return Aggregate(reference, zeros, "delta")


def noisy_fraction(
    unclipped: int,
    participants: int,
    count_std: float,
    denominator: float,
    rng: np.random.Generator,
) -> float:
    """The noisy share of unclipped updates (Andrew et al. 2021, b̃ = (Σ b_i + N(0, σ_b²)) / m),
    computed on the centred bits b_i − 1/2 so that one device moves the sum by at most 1/2
    under add/remove and by 1 under replace-one (the count's noise multipliers 2·σ_b and
    σ_b); ``denominator`` is the fixed cohort size m."""
    centred = unclipped - participants / 2.0 + float(rng.normal(0.0, count_std))
    return centred / denominator + 0.5


def geometric_clip_update(
    clip: float, fraction: float, target: float, learning_rate: float
) -> float:
    """Andrew et al.'s geometric step: ``C·exp(−η·(b̃ − γ))``: fewer updates than the target
    quantile ``γ`` under the norm raise it, more lower it."""
    return clip * math.exp(-learning_rate * (fraction - target))


def update_noise_multiplier(noise_multiplier: float, count_std: float) -> float:
    """The updates' noise multiplier σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2) that keeps the round's
    total privacy at σ when the clipped count is released with noise σ_b (Andrew et al.
    2021, Thm. 1); requires 2σ_b > σ."""
    rest = noise_multiplier**-2 - (2.0 * count_std) ** -2
    if rest <= 0:
        return math.inf
    return float(rest**-0.5)


__all__ = [
    "ClipStage",
    "NoisySumStage",
    "clip_state",
    "gaussian_like",
    "geometric_clip_update",
    "l2_norm",
    "noisy_fraction",
    "torch_generator",
    "update_noise_multiplier",
    "zero_aggregate",
]

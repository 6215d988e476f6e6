"""The server-side pipeline every aggregating node runs: prepare -> aggregate -> finalize.

- **prepare** (with the reference model, the one the node sent out): updates arrive as full
  states or as deltas from the reference (compressed links send deltas). If they are all
  states they stay states; otherwise every state becomes its delta from the reference, so
  one aggregator call sees one kind. Prepare stages (clipping, unmasking, detection) run next.
- **aggregate**: the configured aggregator, given the reference model when it takes one
  (``clipped_mean`` clips ``state − reference``).
- **finalize**: finalize stages (noise, privacy accounting) and then the server optimizer,
  which receives the mean delta (Reddi et al. 2021's pseudo-gradient). Without a server
  optimizer the aggregate is the new model.

The pipeline is pure apart from the server optimizer's moments and the stages' own state;
the same object serves the cloud, an HFL edge and an MS-FL edge.

Differential privacy (``fedge.aggregation.privacy``) passes its stages per call (``run(...,
prepare=, finalize=)``), bound to the node's own state: clipping runs after prepare, on
updates already decompressed (a compressed update's state is its decoded data) and in
delta form, so central noise is always added after decompression; the noisy sum replaces
the aggregate before the server optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from fedge.aggregation.mean import AGGREGATORS, aggregate, check_aggregator
from fedge.aggregation.server_opt import ServerOptimizer, make_server_optimizer, pseudo_gradient
from fedge.core.update import ModelState, Update, UpdateKind, delta


@dataclass(frozen=True)
class Aggregate:
    """An aggregation result in the form it was computed (a state or a mean delta)."""

    reference: ModelState
    result: ModelState
    kind: UpdateKind

    def state(self) -> ModelState:
        """The new model: the result itself, or reference + delta (in float64, cast back)."""
        if self.kind == "state":
            return self.result
        out: ModelState = {}
        for key, base in self.reference.items():
            d = self.result[key]
            if base.is_floating_point():
                out[key] = (base.to(torch.float64) + d.to(torch.float64)).to(base.dtype)
            else:
                out[key] = d.clone()
        return out

    def delta(self) -> ModelState:
        """The mean delta: floating entries in float64, integer buffers as their new value."""
        if self.kind == "delta":
            return {
                k: v.to(torch.float64) if v.is_floating_point() else v
                for k, v in self.result.items()
            }
        grad = pseudo_gradient(self.reference, self.result)
        return {k: grad.get(k, v) for k, v in self.result.items()}


class PrepareStage(Protocol):
    """A step over the received updates before aggregation (clipping, unmasking, scoring)."""

    def prepare(
        self, updates: list[Update], reference: ModelState, rng: np.random.Generator
    ) -> list[Update]: ...


class FinalizeStage(Protocol):
    """A step over the aggregate before the server optimizer (noise, accounting)."""

    def finalize(
        self, aggregate: Aggregate, updates: Sequence[Update], rng: np.random.Generator
    ) -> Aggregate: ...


def same_kind(updates: Sequence[Update], reference: ModelState) -> list[Update]:
    """All states stay states; otherwise every state becomes its delta from ``reference``."""
    if all(u.kind == "state" for u in updates):
        return list(updates)
    return [
        u if u.kind == "delta" else u.with_state(delta(u.state, reference), "delta")
        for u in updates
    ]


@dataclass
class ServerPipeline:
    """prepare -> aggregate -> finalize, validated when built (before any round runs)."""

    aggregator: str = "mean"
    aggregator_params: Mapping[str, Any] = field(default_factory=dict)
    server_optimizer: str = "none"
    server_params: Mapping[str, Any] = field(default_factory=dict)
    prepare_stages: list[PrepareStage] = field(default_factory=list)
    finalize_stages: list[FinalizeStage] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_aggregator(self.aggregator, dict(self.aggregator_params))
        self.optimizer: ServerOptimizer | None = None
        if self.server_optimizer != "none":
            self.optimizer = make_server_optimizer(self.server_optimizer, **self.server_params)
        else:
            make_server_optimizer("none", **self.server_params)

    def prepare(
        self, updates: Sequence[Update], reference: ModelState, rng: np.random.Generator
    ) -> list[Update]:
        prepared = same_kind(updates, reference)
        for stage in self.prepare_stages:
            prepared = stage.prepare(prepared, reference, rng)
        return prepared

    def aggregate(
        self, updates: Sequence[Update], reference: ModelState, rng: np.random.Generator
    ) -> Aggregate:
        result = aggregate(
            self.aggregator, updates, rng, reference=reference, **self.aggregator_params
        )
        return Aggregate(reference, result, updates[0].kind)

    def finalize(
        self, agg: Aggregate, updates: Sequence[Update], rng: np.random.Generator
    ) -> ModelState:
        for stage in self.finalize_stages:
            agg = stage.finalize(agg, updates, rng)
        if self.optimizer is None:
            return agg.state()
        return self.optimizer.step(agg.reference, agg.delta())

    def flagged(self) -> list[str]:
        """Participants a prepare stage has flagged and excludes (``flagged`` attribute)."""
        out: list[str] = []
        for stage in self.prepare_stages:
            out += [p for p in getattr(stage, "flagged", ()) if p not in out]
        return out

    def run(
        self,
        reference: ModelState,
        updates: Sequence[Update],
        rng: np.random.Generator,
        *,
        prepare: Sequence[PrepareStage] = (),
        finalize: Sequence[FinalizeStage] = (),
        empty: Aggregate | None = None,
    ) -> ModelState:
        """The next model from ``reference`` and the received ``updates`` (none: unchanged,
        unless ``empty`` gives the aggregate of no updates for the finalize stages).

        ``prepare`` / ``finalize`` are stages for this call only, run after the pipeline's
        own prepare and before its own finalize: a node's DP clipping and noise, bound to
        that node's state (``fedge.aggregation.privacy``)."""
        if not updates and empty is None:
            return reference
        prepared = self.prepare(updates, reference, rng) if updates else []
        for stage in prepare:
            prepared = stage.prepare(prepared, reference, rng)
        if not prepared and empty is None:  # a prepare stage excluded every update
            return reference
        agg = self.aggregate(prepared, reference, rng) if prepared else empty
        assert agg is not None
        for extra in finalize:
            agg = extra.finalize(agg, prepared, rng)
        return self.finalize(agg, prepared, rng)


__all__ = ["AGGREGATORS", "Aggregate", "FinalizeStage", "PrepareStage", "ServerPipeline"]

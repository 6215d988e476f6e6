"""Hierarchical FL (HierFAVG, Liu et al. 2020) and the edge server it is built from.

HierFAVG: devices run ``kappa1`` local rounds (each the configured epochs, or steps)
between edge aggregations; each edge runs
``kappa2`` FedAvg rounds over the devices attached to it, then the cloud averages the edge
models weighted by the samples behind them. This is the "cloud-based FL" baseline of the
multi-server (MS-FL) paper and the cluster-leader HFL of the edge-caching recommendation paper.

Interpretations: edge round ``k`` of cloud round ``r`` is numbered ``(r-1)·kappa2 + k`` in its
messages so every device draws fresh randomness and availability per edge round; an edge
whose devices all failed returns no update and is left out of the cloud average.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedge.aggregation import aggregate, weighted_mean
from fedge.algorithms.base import (
    AlgorithmSpec,
    RoundLoop,
    RoundRecord,
    register_algorithm,
    weighted_metric,
)
from fedge.algorithms.fedavg import FedAvg
from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.core.node import NodeContext
from fedge.core.transport import Transport
from fedge.core.update import ModelState, Update

Evaluator = Callable[[ModelState], Mapping[str, float]]
EVAL_KEYS = ("accuracy", "precision", "recall", "f1", "loss")


@dataclass
class EdgeServer:
    """The edge side: FedAvg rounds over the devices attached to this edge now."""

    inner: FedAvg
    evaluate: Evaluator | None = None
    absorb_handovers: bool = True
    """Mix updates handed over by vehicles from other edges into the next aggregation."""

    def handover(self, message: Message, ctx: NodeContext) -> Message:
        """Keep the update of a vehicle that arrived from another edge (its origin recorded)."""
        update: Update = message.payload["update"]
        tagged = replace(update, via=str(message.payload.get("origin_edge", "")))
        ctx.state.setdefault("inbox", []).append(tagged)
        return message.reply("ack")

    def train(self, message: Message, ctx: NodeContext) -> Message:
        p = message.payload
        state: ModelState = p["state"] if "state" in p else ctx.state["model"]
        downstream = ctx.downstream
        assert downstream is not None, "an edge needs a downstream transport"
        updates: list[Update] = []
        for k in range(int(p["edge_rounds"])):
            index = int(p["first_round"]) + k
            state, _, updates = self.inner.round(downstream, state, ctx.rng, index, p.get("train"))
        if self.absorb_handovers and ctx.state.get("inbox"):
            state, updates = _absorb(state, updates, ctx.state.pop("inbox"))
        ctx.state["model"] = state
        weight = float(sum(u.weight for u in updates))
        metrics = {
            "train_loss": weighted_metric(updates, "train_loss"),
            "participants": float(len(updates)),
        }
        out: dict[str, Any] = {}
        if p.get("return_model", True) and updates:
            out["update"] = Update(
                state, weight, metrics=metrics, origin=ctx.node_id, round=message.round
            )
        if p.get("evaluate") and self.evaluate is not None:
            out["eval"] = dict(self.evaluate(state))
        ctx.state["published"] = state
        ctx.state["weight"] = weight or ctx.state.get("weight", 0.0)
        out["metrics"] = metrics
        return message.reply("edge_update", out)


def _absorb(
    state: ModelState, updates: list[Update], arrived: list[Update]
) -> tuple[ModelState, list[Update]]:
    """FedAvg weighting of the edge's aggregate and the updates handed over to it."""
    own = float(sum(u.weight for u in updates))
    states = [state, *(u.state for u in arrived)] if own > 0 else [u.state for u in arrived]
    weights = [own, *(u.weight for u in arrived)] if own > 0 else [u.weight for u in arrived]
    return weighted_mean(states, weights), [*updates, *arrived]


def _check_kappa(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"federation.{name}", value, "an integer >= 1")


@dataclass
class HierarchicalFL(RoundLoop):
    """The cloud side of HierFAVG: one cloud aggregation every ``kappa2`` edge rounds."""

    kappa1: int = 1
    kappa2: int = 1
    aggregator: str = "mean"
    aggregator_params: Mapping[str, Any] = field(default_factory=dict)
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        _check_kappa("kappa1", self.kappa1)
        _check_kappa("kappa2", self.kappa2)

    def request(self, transport: Transport, r: int, payload: dict[str, Any]) -> list[Message]:
        common = {
            "edge_rounds": self.kappa2,
            "first_round": (r - 1) * self.kappa2 + 1,
            "train": {"local_rounds": self.kappa1},
        }
        return [
            Message(transport.node_id, e, "edge_train", r, {**common, **payload})
            for e in transport.nodes("edge")
        ]

    def step(
        self, transport: Transport, state: ModelState, rng: np.random.Generator, r: int, rounds: int
    ) -> RoundRecord:
        replies = transport.send(self.request(transport, r, {"state": state}), self.deadline_s)
        updates = [m.payload["update"] for m in replies if "update" in m.payload]
        if updates:
            state = aggregate(self.aggregator, updates, rng, **self.aggregator_params)
        metrics = {
            "edges": float(len(updates)),
            "participants": sum(m.payload["metrics"]["participants"] for m in replies),
            "train_loss": weighted_metric(updates, "train_loss"),
        }
        return RoundRecord(r, state, metrics)


def edge_eval_summary(evals: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric across edges, plus the min and max accuracy."""
    if not evals:
        return {}
    out = {k: float(np.mean([e[k] for e in evals])) for k in EVAL_KEYS if k in evals[0]}
    acc = [e["accuracy"] for e in evals]
    out.update(accuracy_min=float(min(acc)), accuracy_max=float(max(acc)))
    return out


register_algorithm(
    AlgorithmSpec(
        "hierarchical",
        "HierFAVG: edges aggregate every kappa1 local rounds, the cloud every kappa2 edge rounds",
        HierarchicalFL,
        roles=("edge",),
    )
)

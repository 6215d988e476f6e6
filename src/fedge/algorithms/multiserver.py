"""Multi-server FL (MS-FL, vehicular edge computing) and its isolated single-server baseline.

Each edge (RSU) runs FedAvg over the devices in its coverage; then, in MS-FL, it fetches its
neighbour edges' models over the backhaul, scores every candidate on its own validation
split and mixes them with an inter-server rule (WA, BA, SA, DWAA, SPAA). In single-server FL
the exchange never happens. The cloud node only sends a small trigger per phase and
collects the edges' metrics; no model goes to the cloud after the initial broadcast.

Interpretations: the edges publish their trained models before any exchange starts, so every
edge mixes the models of the same round (no edge sees a peer's already-mixed model); each
edge evaluates its model on the global test set for reporting (mean, min and max across
honest edges: an edge configured to attack, ``[[attack]]`` with tier "edge", is left out); the
validation split of an edge is described in ``fedge.experiment.build``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.aggregation import Candidate, Score, interserver
from fedge.algorithms.base import RoundRecord
from fedge.algorithms.hierarchical import (
    Evaluator,
    HierarchicalFL,
    edge_eval_summary,
    flagged_in,
)
from fedge.algorithms.privacy import edge_metrics
from fedge.core.message import Message
from fedge.core.node import NodeContext
from fedge.core.transport import Transport
from fedge.core.update import ModelState, Update, Work, as_state


@dataclass
class Exchange:
    """The edge side of the inter-server step: fetch peers, score, mix with a rule."""

    rule: str
    params: Mapping[str, Any]
    validate: Callable[[ModelState], Score]
    """Scores a model on this edge's validation split."""
    evaluate: Evaluator | None = None
    """Evaluates a model on the test set for reporting."""
    validation_flops: float = 0.0
    """FLOPs of one validation pass, charged to the edge per candidate scored."""
    report: bool = True
    """Whether this edge's test accuracy counts in the round's figures (False for an edge
    configured to attack: the figures are those of the honest edges)."""

    def get_model(self, message: Message, ctx: NodeContext) -> Message:
        state = ctx.state["published"]
        weight = float(ctx.state.get("weight", 0.0))
        model = Update(state, weight, origin=ctx.node_id, round=message.round)
        return message.reply("model", {"model": model})

    def exchange(self, message: Message, ctx: NodeContext) -> Message:
        downstream = ctx.downstream
        assert downstream is not None, "an edge needs a downstream transport"
        peers = downstream.nodes("edge")
        asks = [Message(ctx.node_id, p, "get_model", message.round) for p in peers]
        replies = downstream.send(asks)
        passes = [0]

        def validate(state: ModelState) -> Score:
            passes[0] += 1
            return self.validate(state)

        own = _candidate(validate, ctx.state["model"], ctx.state.get("weight", 0.0), ctx.node_id)
        others = [
            _candidate(validate, as_state(m, own.state), m.weight, r.src)
            for r in replies
            for m in [r.payload["model"]]
        ]
        arrived = ctx.state.pop("inbox", [])
        others += [
            _candidate(validate, as_state(u, own.state), u.weight, f"{u.origin}@{u.via}")
            for u in arrived
        ]
        result = interserver(self.rule, own, others, validate, **self.params)
        ctx.add_work(Work(0, passes[0] * self.validation_flops))
        ctx.state["model"] = result.state
        out: dict[str, Any] = {
            "metrics": {
                "peers": float(len(others)),
                "accepted": float(len(result.accepted)),
                "own_weight": result.weights.get(ctx.node_id, 0.0),
                "handed_over": float(len(arrived)),
            },
        }
        if message.payload.get("evaluate") and self.evaluate is not None and self.report:
            out["eval"] = dict(self.evaluate(result.state))
        return message.reply("exchanged", out)


def _candidate(
    validate: Callable[[ModelState], Score], state: ModelState, weight: float, origin: str
) -> Candidate:
    return Candidate(state, float(weight), validate(state), origin)


@dataclass
class MultiServerFL(HierarchicalFL):
    """Edge rounds at every RSU, then (if ``exchange``) the inter-server step each round."""

    exchange: bool = True
    evaluate_every: int = 1

    def step(
        self,
        transport: Transport,
        initial: ModelState,
        rng: np.random.Generator,
        r: int,
        rounds: int,
    ) -> RoundRecord:
        """The edges' models stay on the edges; the record carries the initial state along."""
        due = r % self.evaluate_every == 0 or r == rounds
        payload: dict[str, Any] = {"return_model": False, "evaluate": due and not self.exchange}
        if r == 1:
            payload["model"] = Update(initial, origin=transport.node_id, round=r)
        trained = transport.send(self.request(transport, r, payload), self.deadline_s)
        replies = trained
        metrics: dict[str, float] = {}
        if self.exchange:
            asks = [
                Message(transport.node_id, m.src, "exchange", r, {"evaluate": due}) for m in trained
            ]
            replies = transport.send(asks)
            metrics["accepted_peers"] = sum(m.payload["metrics"]["accepted"] for m in replies)
            metrics["handed_over"] = sum(m.payload["metrics"]["handed_over"] for m in replies)
        metrics.update(
            edge_eval_summary([m.payload["eval"] for m in replies if "eval" in m.payload])
        )
        metrics["participants"] = sum(m.payload["metrics"]["participants"] for m in trained)
        metrics["edges"] = float(len(trained))
        metrics.update(edge_metrics([m.payload["metrics"] for m in trained]))
        flagged = flagged_in(trained, ())
        return RoundRecord(r, initial, metrics, evaluated=due, flagged=flagged)


__all__ = ["Exchange", "MultiServerFL", "Score"]

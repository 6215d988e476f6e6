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

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedge.aggregation import weighted_mean
from fedge.aggregation.pipeline import ServerPipeline
from fedge.algorithms.base import (
    RoundLoop,
    RoundRecord,
    weighted_metric,
)
from fedge.algorithms.fedavg import FedAvg
from fedge.algorithms.privacy import Privacy, PrivateRound, edge_metrics
from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.core.node import NodeContext
from fedge.core.transport import Transport
from fedge.core.update import ModelState, Update, as_state

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
        state: ModelState = p["model"].state if "model" in p else ctx.state["model"]
        downstream = ctx.downstream
        assert downstream is not None, "an edge needs a downstream transport"
        updates: list[Update] = []
        participants = 0.0
        privacy = self.inner.privacy
        memory = ctx.state.setdefault("privacy", {}) if privacy is not None else None
        for k in range(int(p["edge_rounds"])):
            index = int(p["first_round"]) + k
            state, inner, updates = self.inner.round(
                downstream, state, ctx.rng, index, p.get("train"), memory
            )
            participants = inner["participants"]
        if self.absorb_handovers and ctx.state.get("inbox"):
            before = len(updates)
            state, updates = _absorb(state, updates, ctx.state.pop("inbox"))
            participants += len(updates) - before
        ctx.state["model"] = state
        weight = float(sum(u.weight for u in updates))
        if privacy is not None and memory is not None:
            fixed = privacy.edge_weight(memory)
            weight = weight if fixed is None else fixed
        metrics = {
            "train_loss": weighted_metric(updates, "train_loss"),
            "participants": float(participants),
        }
        if privacy is not None and memory is not None:
            metrics.update(privacy.metrics(memory, int(p["edge_rounds"])))
        out: dict[str, Any] = {}
        if p.get("return_model", True) and updates:
            out["update"] = Update(
                state, weight, metrics=metrics, origin=ctx.node_id, round=message.round
            )
        if p.get("evaluate") and self.evaluate is not None:
            out["eval"] = dict(self.evaluate(state))
        flagged = self.inner.pipeline.flagged()
        if flagged:  # the edge's detection (``[defence]``) excludes these devices
            out["flagged"] = flagged
        ctx.state["published"] = state
        ctx.state["weight"] = weight or ctx.state.get("weight", 0.0)
        out["metrics"] = metrics
        return message.reply("edge_update", out)


def _absorb(
    state: ModelState, updates: list[Update], arrived: list[Update]
) -> tuple[ModelState, list[Update]]:
    """FedAvg weighting of the edge's aggregate and the updates handed over to it."""
    own = float(sum(u.weight for u in updates))
    moved = [as_state(u, state) for u in arrived]
    states = [state, *moved] if own > 0 else moved
    weights = [own, *(u.weight for u in arrived)] if own > 0 else [u.weight for u in arrived]
    return weighted_mean(states, weights), [*updates, *arrived]


def _check_kappa(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"federation.{name}", value, "an integer >= 1")


KAPPA1_RULES = ("fixed", "adacomm")


def adacomm_kappa1(kappa1_0: int, loss_0: float, loss: float, bounds: tuple[int, int]) -> int:
    """AdaComm's local period ``ceil(sqrt(loss / loss_0) * kappa1_0)``, clipped to ``bounds``.

    Wang & Joshi, "Adaptive Communication Strategies to Achieve the Best Error-Runtime
    Trade-off in Local-Update SGD" (SysML 2019, arXiv:1810.08313), the rule for a fixed
    learning rate: the period shrinks as the training loss falls below its initial value
    (and grows back if the loss rises). ``loss_0`` must be positive.
    """
    tau = math.ceil(math.sqrt(max(loss, 0.0) / loss_0) * kappa1_0)
    return min(max(tau, bounds[0]), bounds[1])


def _kappa1_bound(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"federation.kappa1_params.{name}", value, "an integer >= 1")
    return value


def kappa1_bounds(rule: str, params: Mapping[str, Any], kappa1: int) -> tuple[int, int]:
    """Validated (kappa1_min, kappa1_max) of ``rule``; ``fixed`` takes no parameters,
    ``adacomm`` bounds default to (1, kappa1) and must hold the initial ``kappa1``."""
    if rule not in KAPPA1_RULES:
        raise ConfigError("federation.kappa1_rule", rule, " | ".join(KAPPA1_RULES))
    allowed = ("kappa1_min", "kappa1_max") if rule == "adacomm" else ()
    for key, value in params.items():
        if key not in allowed:
            choices = "one of " + ", ".join(allowed) if allowed else "no parameters"
            raise ConfigError(f"federation.kappa1_params.{key}", value, f"for {rule!r}: {choices}")
    low = _kappa1_bound(params, "kappa1_min", 1)
    high = _kappa1_bound(params, "kappa1_max", kappa1)
    if low > kappa1:
        raise ConfigError("federation.kappa1_params.kappa1_min", low, f"<= kappa1 ({kappa1})")
    if high < kappa1:
        raise ConfigError("federation.kappa1_params.kappa1_max", high, f">= kappa1 ({kappa1})")
    return low, high


@dataclass
class HierarchicalFL(RoundLoop):
    """The cloud side of HierFAVG: one cloud aggregation every ``kappa2`` edge rounds.

    ``kappa1_rule`` chooses κ1 (local rounds per edge round) for each cloud round: ``fixed``
    keeps ``kappa1``; ``adacomm`` starts at ``kappa1`` and after every cloud round applies
    ``adacomm_kappa1`` within ``kappa1_params`` (``kappa1_min``, ``kappa1_max``). The chosen κ1
    is the round's ``kappa1`` metric. Interpretations of AdaComm: the period is re-chosen once
    per cloud round (the paper: every fixed wall-clock interval); its loss F(x) is the training
    loss the edges report for the round (the sample-weighted mean of the devices' losses over
    their local minibatches, a proxy for the loss of the averaged model), F(x_0) the one of
    the first cloud round; a round without a finite loss keeps κ1. The rule's memory
    (``kappa1_state``) is a plain attribute, so a checkpoint of the coordinator carries it; a
    run that starts at round 1 clears it.
    """

    kappa1: int = 1
    kappa2: int = 1
    aggregator: str = "mean"
    aggregator_params: Mapping[str, Any] = field(default_factory=dict)
    deadline_s: float | None = None
    kappa1_rule: str = "fixed"
    kappa1_params: Mapping[str, Any] = field(default_factory=dict)
    privacy: Privacy | None = None
    """Central DP noise at the cloud over the edges' clipped sums (``CloudDP``); its state
    lives in ``privacy_memory``."""

    def __post_init__(self) -> None:
        _check_kappa("kappa1", self.kappa1)
        _check_kappa("kappa2", self.kappa2)
        self.kappa1_bounds = kappa1_bounds(self.kappa1_rule, self.kappa1_params, self.kappa1)
        self.kappa1_state: dict[str, float] = {}
        self.pipeline = ServerPipeline(self.aggregator, dict(self.aggregator_params))
        self.privacy_memory: dict[str, Any] = {}

    def current_kappa1(self) -> int:
        """κ1 of the coming cloud round."""
        return int(self.kappa1_state.get("kappa1", self.kappa1))

    def adapt_kappa1(self, loss: float) -> None:
        """Fold a cloud round's training loss into the rule; sets the next round's κ1."""
        if self.kappa1_rule == "fixed" or not math.isfinite(loss):
            return
        if "loss0" not in self.kappa1_state:
            if loss <= 0:
                return
            self.kappa1_state["loss0"] = loss
        loss_0 = self.kappa1_state["loss0"]
        self.kappa1_state["kappa1"] = adacomm_kappa1(self.kappa1, loss_0, loss, self.kappa1_bounds)

    def request(self, transport: Transport, r: int, payload: dict[str, Any]) -> list[Message]:
        common = {
            "edge_rounds": self.kappa2,
            "first_round": (r - 1) * self.kappa2 + 1,
            "train": {"local_rounds": self.current_kappa1()},
        }
        return [
            Message(transport.node_id, e, "edge_train", r, {**common, **payload})
            for e in transport.nodes("edge")
        ]

    def step(
        self, transport: Transport, state: ModelState, rng: np.random.Generator, r: int, rounds: int
    ) -> RoundRecord:
        if r == 1:
            self.kappa1_state = {}
            self.privacy_memory = {}
        kappa1 = self.current_kappa1()
        model = Update(state, origin=transport.node_id, round=r)
        if self.privacy is not None:
            self.privacy.admit(self.privacy_memory, 0, 0)
        replies = transport.send(self.request(transport, r, {"model": model}), self.deadline_s)
        updates = [m.payload["update"] for m in replies if "update" in m.payload]
        private: dict[str, float] = {}
        if self.privacy is None:
            state = self.pipeline.run(state, updates, rng)
        else:
            memory = self.privacy_memory
            state, private = self.privacy.aggregate(
                PrivateRound(self.pipeline, state, updates, rng, memory, 0, 0)
            )
            private.update(self.privacy.metrics(memory, 1))
        metrics = {
            "edges": float(len(updates)),
            "participants": sum(m.payload["metrics"]["participants"] for m in replies),
            "train_loss": weighted_metric(updates, "train_loss"),
            "kappa1": float(kappa1),
            **edge_metrics([m.payload["metrics"] for m in replies]),
            **private,
        }
        self.adapt_kappa1(metrics["train_loss"])
        return RoundRecord(r, state, metrics, flagged=flagged_in(replies, self.pipeline.flagged()))


def flagged_in(replies: Sequence[Message], own: Sequence[str]) -> tuple[str, ...]:
    """Participants flagged by this aggregator (``own``) and by the edges that replied."""
    out = list(own)
    for m in replies:
        out += [p for p in m.payload.get("flagged", ()) if p not in out]
    return tuple(out)


def edge_eval_summary(evals: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric across edges, plus the min and max accuracy."""
    if not evals:
        return {}
    out = {k: float(np.mean([e[k] for e in evals])) for k in EVAL_KEYS if k in evals[0]}
    acc = [e["accuracy"] for e in evals]
    out.update(accuracy_min=float(min(acc)), accuracy_max=float(max(acc)))
    return out


def spread_summary(evals: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """``edge_eval_summary`` of per-device evaluations plus the spread of their accuracy:
    ``accuracy_std`` (population), ``accuracy_p10`` and ``accuracy_p90`` (linear
    interpolation, numpy's default)."""
    out = edge_eval_summary(evals)
    if not evals:
        return out
    acc = np.asarray([e["accuracy"] for e in evals], dtype=float)
    p10, p90 = np.percentile(acc, [10, 90])
    out.update(accuracy_std=float(acc.std()), accuracy_p10=float(p10), accuracy_p90=float(p90))
    return out

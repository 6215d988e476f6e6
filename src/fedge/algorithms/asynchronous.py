"""Asynchronous FL on the simulated clock: FedAsync and FedBuff, cloud-only and hierarchical.

**FedAsync** (Xie, Koyejo & Gupta 2019, "Asynchronous Federated Optimization"): every update
that arrives is mixed into the global model at once, ``x ← (1 − α_t)·x + α_t·x_new`` with
``α_t = α·s(t − τ)``, where ``τ`` is the version the device started from and ``t`` the
current version; ``s`` is a staleness function (``constant``, ``polynomial`` ``(τ+1)^−a``,
``hinge`` ``1`` up to ``b`` then ``1/(a·(τ−b)+1)``).

**FedBuff** (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous
Aggregation"): each arriving update is turned into its delta from the model its device
started from, scaled by ``s(t − τ)`` and buffered; once ``buffer_size`` (K) deltas are in the
buffer the server applies their (sample-weighted) mean through FedAvg's server pipeline, with
the server learning rate ``server_lr`` (plain server SGD) or ``federation.server_optimizer``.

Both keep at most ``concurrency`` devices training; a new one is chosen by FedAvg's selector
(``federation.selection``) among the reachable devices not already training whenever one
delivers. Nothing here assumes a duration: each request goes out through ``submit`` and the
transport decides when its reply arrives (``next_reply``), so on the simulated engine the
system model's compute (FLOPs / FLOP/s, stragglers), links, dropouts and mobility do. Every
request carries the model version it was sent with, so staleness is the number of server
versions applied between dispatch and arrival, read off the clock's order of events.

Interpretations:

- *Rounds.* A FedBuff round is one server update (K applied updates); a FedAsync round is
  ``updates_per_round`` applied updates. ``rounds`` bounds the rounds;
  ``asynchronous.time_budget_s`` also stops the run after the first round that ends past
  that simulated time.
- *Round index.* A node's n-th request of the run is sent with round index ``n`` (as in
  FedAvg, where a device chosen in every round trains its n-th time in round n): each
  request draws its own availability, straggler slowdown and training randomness.
- *Dropouts.* A device that is unavailable for a dispatch does not take the task; the
  simulated transport says so at once (an ``absent`` reply, asked for with
  ``report_absent``) and the slot goes to another device. 1000·concurrency absences in a row
  end the run with an error (no device can take part).
- *Hierarchy* (``fedasync_hier``, ``fedbuff_hier``). The cloud runs the rule over the edges
  (every edge busy at once; staleness in cloud versions; FedBuff with K =
  ``cloud_buffer_size``): it sends an edge the current cloud model and its version; the edge
  runs an *episode* of the same rule over the devices attached to it, from that model, with
  ``concurrency`` devices at a time and staleness in edge versions, until it has applied
  ``edge_updates`` server updates; it then stops dispatching, folds in what is still in
  flight (with its staleness; FedBuff applies the partial buffer) and returns its model to
  the cloud, which applies it and sends the edge the newest model for its next episode.
  Draining loses no computation but makes an episode wait for its slowest device in flight.
- *Handover.* A vehicle that trains for edge i and is attached to edge j when it uploads
  delivers to j (``on_handover = "redirect"``); i is told and frees the slot. j keeps the
  update with the cloud version it started from and applies it in its next step after the
  update arrived (FedAsync: mixed with ``α·s(τ)``, τ in cloud versions; FedBuff: its delta
  from j's model is buffered, scaled by ``s(τ)``).
- *Resume.* A checkpoint holds the coordinator, the transport and its clock with the replies
  in flight, so runs on the local engine resume like synchronous ones.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from fedge.aggregation.pipeline import ServerPipeline
from fedge.algorithms.base import (
    AlgorithmSpec,
    Assembly,
    BuildContext,
    RoundLoop,
    RoundRecord,
    register_algorithm,
    weighted_metric,
)
from fedge.algorithms.federation import device_apps
from fedge.algorithms.selection import SelectionContext, SelectionHint, Selector, make_selector
from fedge.core.errors import ConfigError, FedgeError
from fedge.core.message import Message
from fedge.core.node import NodeApp, NodeContext
from fedge.core.settings import Section
from fedge.core.transport import ABSENT, Transport
from fedge.core.update import ModelState, Update, as_state, delta

Mode = Literal["fedasync", "fedbuff"]
STALENESS = ("constant", "polynomial", "hinge")
_STALENESS_PARAMS: dict[str, dict[str, float]] = {
    "constant": {},
    "polynomial": {"a": 0.5},
    "hinge": {"a": 10.0, "b": 4.0},
}
MAX_ABSENT_PER_SLOT = 1000


def check_staleness(name: str, params: Mapping[str, Any]) -> dict[str, float]:
    """The staleness function's parameters with defaults; ConfigError names the field."""
    if name not in _STALENESS_PARAMS:
        raise ConfigError("asynchronous.staleness", name, " | ".join(STALENESS))
    defaults = _STALENESS_PARAMS[name]
    out = dict(defaults)
    for key, value in params.items():
        where = f"asynchronous.staleness_params.{key}"
        if key not in defaults:
            allowed = "one of " + ", ".join(defaults) if defaults else "no parameters"
            raise ConfigError(where, value, f"for {name!r}: {allowed}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ConfigError(where, value, "a number >= 0")
        out[key] = float(value)
    return out


def staleness_weight(name: str, params: Mapping[str, float], tau: int) -> float:
    """s(τ) of Xie et al.: constant 1; polynomial (τ+1)^−a; hinge 1 for τ <= b, else
    1 / (a·(τ − b) + 1)."""
    if tau < 0:
        raise ValueError(f"staleness must be >= 0, got {tau}")
    if name == "polynomial":
        return float((tau + 1) ** -params["a"])
    if name == "hinge":
        a, b = params["a"], params["b"]
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    return 1.0


def mix(model: ModelState, new: ModelState, weight: float) -> ModelState:
    """(1 − weight)·model + weight·new for floating entries (in float64, cast back); integer
    buffers take ``new``'s value. ``weight = 1`` returns ``new``'s values exactly."""
    out: ModelState = {}
    for key, base in model.items():
        incoming = new[key]
        if not base.is_floating_point() or weight == 1.0:
            out[key] = incoming.detach().clone()
            continue
        mixed = (1.0 - weight) * base.to(torch.float64) + weight * incoming.to(torch.float64)
        out[key] = mixed.to(base.dtype)
    return out


def scaled(state: ModelState, factor: float) -> ModelState:
    """``factor`` times the floating entries (a delta's integer buffers are kept)."""
    if factor == 1.0:
        return state
    return {k: v * factor if v.is_floating_point() else v for k, v in state.items()}


class AsyncSettings(Section):
    """``[asynchronous]``: FedAsync and FedBuff (cloud-only and hierarchical)."""

    section: ClassVar[str] = "asynchronous"

    concurrency: int = Field(10, ge=1, description="devices training at once (per edge)")
    buffer_size: int = Field(10, ge=1, description="FedBuff: K updates per server update")
    updates_per_round: int = Field(10, ge=1, description="FedAsync: applied updates per round")
    alpha: float = Field(0.6, gt=0, le=1, description="FedAsync: mixing weight")
    staleness: str = Field("polynomial", description="constant | polynomial | hinge")
    staleness_params: dict[str, float] = Field(
        default_factory=dict, description="polynomial: a (0.5); hinge: a (10), b (4)"
    )
    server_lr: float = Field(1.0, gt=0, description="FedBuff: server learning rate")
    time_budget_s: float | None = Field(None, gt=0, description="simulated seconds")
    edge_updates: int = Field(2, ge=1, description="hierarchy: edge updates per episode")
    cloud_buffer_size: int = Field(1, ge=1, description="hierarchical FedBuff: K at the cloud")

    @model_validator(mode="after")
    def _check(self) -> AsyncSettings:
        check_staleness(self.staleness, self.staleness_params)
        return self


@dataclass(frozen=True)
class Rule:
    """How a server applies an arriving update: FedAsync mixing or FedBuff buffering."""

    mode: Mode
    buffer_size: int = 1
    alpha: float = 1.0
    staleness: str = "constant"
    staleness_params: Mapping[str, float] = field(default_factory=dict)
    pipeline: ServerPipeline = field(default_factory=ServerPipeline)

    def weight(self, tau: int) -> float:
        return staleness_weight(self.staleness, self.staleness_params, tau)


@dataclass(frozen=True)
class Flight:
    """A request in flight: who trains, from which version, for which slot."""

    node: str
    version: int


@dataclass
class AsyncServer:
    """One aggregating node's asynchronous loop (the cloud, or an edge for one episode).

    ``model`` is version ``version``; ``starts`` keeps the models that requests in flight
    started from (their deltas are taken against them). ``base_round`` offsets the round
    index of the requests (each edge episode gets its own range).
    """

    rule: Rule
    concurrency: int
    selector: Selector
    tier: str = "device"
    kind: str = "train"
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Added to every request's payload (e.g. ``on_handover``, a cloud ``version``)."""
    hint: SelectionHint | None = None
    model: ModelState = field(default_factory=dict)
    version: int = 0
    base_round: int = 0
    dispatched: int = 0
    tasks: Counter[str] = field(default_factory=Counter)
    """Requests sent to each node: its n-th request has round index ``base_round + n``."""
    in_flight: dict[tuple[str, int], Flight] = field(default_factory=dict)
    starts: dict[int, ModelState] = field(default_factory=dict)
    buffer: list[Update] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    staleness: list[int] = field(default_factory=list)
    applied: list[Update] = field(default_factory=list)
    absent_in_a_row: int = 0

    def reset(self, model: ModelState, base_round: int = 0) -> None:
        """Start from ``model`` as version 0 with nothing in flight."""
        self.model, self.version, self.base_round, self.dispatched = model, 0, base_round, 0
        self.in_flight, self.starts, self.buffer, self.tasks = {}, {}, [], Counter()
        self.stats, self.staleness, self.applied = Counter(), [], []
        self.absent_in_a_row = 0

    # -- dispatch ---------------------------------------------------------------------------
    def fill(self, transport: Transport, rng: np.random.Generator) -> None:
        """Start requests until ``concurrency`` are in flight or nobody idle is reachable."""
        busy = {f.node for f in self.in_flight.values()}
        idle = [n for n in transport.nodes(self.tier) if n not in busy]
        k = min(self.concurrency - len(self.in_flight), len(idle))
        if k <= 0:
            return
        payload = self._payload(transport)
        ctx = SelectionContext(transport, self.dispatched + 1, payload, None, self.hint)
        chosen = self.selector.select(idle, k, rng, ctx)
        messages = []
        for node in chosen:
            self.dispatched += 1
            self.tasks[node] += 1
            r = self.base_round + self.tasks[node]
            self.in_flight[(node, r)] = Flight(node, self.version)
            body = {**payload, "episode": self.dispatched} if self.tier == "edge" else payload
            messages.append(Message(transport.node_id, node, self.kind, r, body))
        self.starts[self.version] = self.model
        self.stats["dispatched"] += len(messages)
        transport.submit(messages)

    def _payload(self, transport: Transport) -> dict[str, Any]:
        model = Update(self.model, origin=transport.node_id, round=self.version)
        return {"version": self.version, **self.extra, "model": model, "report_absent": True}

    # -- arrivals ---------------------------------------------------------------------------
    def receive(self, reply: Message, rng: np.random.Generator) -> None:
        """Apply one reply (or free the slot of an absent device)."""
        flight = self.in_flight.pop((reply.src, reply.round))
        start = self.starts[flight.version]
        self._release(flight.version)
        update = reply.payload.get("update")
        if reply.kind == ABSENT or update is None:
            self.stats["absent"] += 1
            self.absent_in_a_row += 1
            if self.absent_in_a_row >= MAX_ABSENT_PER_SLOT * self.concurrency:
                raise FedgeError(
                    f"{self.absent_in_a_row} requests in a row found no {self.tier} to take "
                    "part (system.dropout_prob, coverage): nothing can train"
                )
            return
        self.absent_in_a_row = 0
        self.apply(update, start, self.version - flight.version, rng)

    def apply(self, update: Update, start: ModelState, tau: int, rng: np.random.Generator) -> None:
        """Apply an update trained from ``start`` that is ``tau`` versions stale."""
        self.staleness.append(tau)
        self.applied.append(update)
        s = self.rule.weight(tau)
        if self.rule.mode == "fedasync":
            self.model = mix(self.model, as_state(update, start), self.rule.alpha * s)
            self._advance()
            return
        d = update.state if update.kind == "delta" else delta(update.state, start)
        self.buffer.append(update.with_state(scaled(d, s), "delta"))
        if len(self.buffer) >= self.rule.buffer_size:
            self.flush(rng)

    def flush(self, rng: np.random.Generator) -> None:
        """FedBuff's server step over the buffer (nothing when it is empty)."""
        if not self.buffer:
            return
        self.model = self.rule.pipeline.run(self.model, self.buffer, rng)
        self.buffer = []
        self._advance()

    def _advance(self) -> None:
        self._release(self.version)
        self.version += 1
        self.stats["updates"] += 1

    def _release(self, version: int) -> None:
        """Forget a start model nobody in flight needs any more (the current one stays)."""
        if version != self.version and all(f.version != version for f in self.in_flight.values()):
            self.starts.pop(version, None)

    def step(self, transport: Transport, rng: np.random.Generator) -> bool:
        """Top up the requests, then take the next reply; False when nothing is in flight."""
        self.fill(transport, rng)
        reply = transport.next_reply()
        if reply is None:
            return False
        self.receive(reply, rng)
        return True

    def drain(self, transport: Transport, rng: np.random.Generator) -> None:
        """Take every reply still in flight without starting new requests, then flush."""
        while self.in_flight:
            reply = transport.next_reply()
            if reply is None:
                break
            self.receive(reply, rng)
        self.in_flight.clear()
        self.flush(rng)

    def take_metrics(self) -> dict[str, float]:
        """What happened since the last call: updates applied, their staleness and loss."""
        tau = self.staleness or [0]
        out = {
            "version": float(self.version),
            "applied": float(len(self.applied)),
            "staleness_mean": float(np.mean(tau)) if self.staleness else math.nan,
            "staleness_max": float(max(tau)) if self.staleness else math.nan,
            "train_loss": weighted_metric(self.applied, "train_loss"),
            "in_flight": float(len(self.in_flight)),
            "absent": float(self.stats["absent"]),
        }
        if self.tier == "edge":  # devices' staleness at their edges, from the edge updates
            out["edge_staleness_mean"] = weighted_metric(self.applied, "staleness_mean")
            out["edge_staleness_max"] = max(
                (u.metrics.get("staleness_max", math.nan) for u in self.applied), default=math.nan
            )
        self.staleness, self.applied = [], []
        self.stats["absent"] = 0
        return out


@dataclass
class AsyncFL(RoundLoop):
    """The coordinator: an ``AsyncServer`` at the cloud, over devices or edges, whose
    rounds are FedBuff server updates or ``updates_per_round`` FedAsync updates."""

    server: AsyncServer
    updates_per_round: int = 1
    time_budget_s: float | None = None

    def finished(self, transport: Transport, record: RoundRecord) -> bool:
        """The run also stops after the round that ends past the time budget."""
        budget = self.time_budget_s
        return budget is not None and transport.now() >= budget

    def step(
        self, transport: Transport, state: ModelState, rng: np.random.Generator, r: int, rounds: int
    ) -> RoundRecord:
        server = self.server
        if r == 1:
            server.reset(state)
        target = server.stats["updates"] + self.updates_per_round
        while server.stats["updates"] < target:
            if not server.step(transport, rng):
                raise FedgeError(
                    f"round {r}: no {server.tier} is reachable and nothing is in flight"
                )
        return RoundRecord(r, server.model, server.take_metrics())


EPISODE_SPAN = 100_000
"""The n-th request an edge sends a device in the episode that the cloud's e-th request
(``episode``) started has round index ``e·EPISODE_SPAN + n``: unique per device and run."""


@dataclass
class AsyncEdge:
    """An edge of the asynchronous hierarchy: one episode of the rule over its attached
    devices per cloud request (see the module's interpretations)."""

    server: AsyncServer
    edge_updates: int

    def train(self, message: Message, ctx: NodeContext) -> Message:
        downstream = ctx.downstream
        assert downstream is not None, "an edge needs a downstream transport"
        p = message.payload
        server = self.server
        server.reset(p["model"].state, base_round=int(p["episode"]) * EPISODE_SPAN)
        cloud_version = int(p["version"])
        server.extra = {"version": cloud_version, "on_handover": "redirect"}
        self._absorb(ctx, downstream.now(), cloud_version)
        while server.stats["updates"] < self.edge_updates:
            if not server.step(downstream, ctx.rng):
                break
            self._absorb(ctx, downstream.now(), cloud_version)
        server.drain(downstream, ctx.rng)
        weight = float(sum(u.weight for u in server.applied))
        metrics = server.take_metrics()
        out: dict[str, Any] = {"metrics": metrics}
        if weight > 0:
            out["update"] = Update(
                server.model, weight, metrics=metrics, origin=ctx.node_id, round=message.round
            )
        return message.reply("edge_update", out)

    def _absorb(self, ctx: NodeContext, now_s: float, cloud_version: int) -> None:
        """Apply the handed-over updates that have arrived by ``now_s`` (staleness in cloud
        versions); later ones wait for a later step."""
        inbox: list[tuple[float, int, Update]] = ctx.state.get("inbox", [])
        due = [item for item in inbox if item[0] <= now_s]
        if not due:
            return
        ctx.state["inbox"] = [item for item in inbox if item[0] > now_s]
        for _, version, update in due:
            tau = max(cloud_version - version, 0)
            self.server.apply(update, self.server.model, tau, ctx.rng)
            ctx.state["handovers_applied"] = ctx.state.get("handovers_applied", 0) + 1

    def handover(self, message: Message, ctx: NodeContext) -> Message:
        """Keep a vehicle's update that was trained for another edge, with its arrival time
        and the cloud version it started from."""
        p = message.payload
        update = Update(
            p["update"].state,
            p["update"].weight,
            kind=p["update"].kind,
            metrics=p["update"].metrics,
            origin=p["update"].origin,
            via=str(p.get("origin_edge", "")),
            round=p["update"].round,
        )
        ctx.state.setdefault("inbox", []).append((ctx.now(), int(p.get("version", 0)), update))
        return message.reply("ack")


# -- assembly -----------------------------------------------------------------------------


def _rule(ctx: BuildContext, mode: Mode, buffer_size: int) -> Rule:
    """The rule of ``[asynchronous]`` with FedAvg's aggregator and server step."""
    a: AsyncSettings = ctx.settings
    f = ctx.config.federation
    optimizer, params = f.server_optimizer or "none", dict(f.server_params)
    if optimizer == "none" and a.server_lr != 1.0:  # plain server SGD with lr = server_lr
        optimizer, params = "fedavgm", {"lr": a.server_lr, "momentum": 0.0}
    pipeline = ServerPipeline(f.aggregator, dict(f.aggregator_params), optimizer, params)
    staleness = check_staleness(a.staleness, a.staleness_params)
    return Rule(mode, buffer_size, a.alpha, a.staleness, staleness, pipeline)


def _server(ctx: BuildContext, rule: Rule, concurrency: int, **kw: Any) -> AsyncServer:
    """An AsyncServer choosing with ``federation.selection`` (FedAvg's selectors)."""
    f = ctx.config.federation
    selector = make_selector(f.selection, dict(f.selection_params), concurrency, None)
    examples = {d: len(idx) for d, idx in zip(ctx.system.ids("device"), ctx.parts, strict=True)}
    hint = SelectionHint(examples, ctx.training, ctx.profile.flops_train)
    return AsyncServer(rule, concurrency, selector, hint=hint, **kw)


def _rows(mode: Mode, a: AsyncSettings) -> int:
    return 1 if mode == "fedbuff" else a.updates_per_round


def assemble(mode: Mode) -> Callable[[BuildContext], Assembly]:
    """Cloud-only: the cloud runs the rule over the devices."""

    def build(ctx: BuildContext) -> Assembly:
        a: AsyncSettings = ctx.settings
        server = _server(ctx, _rule(ctx, mode, a.buffer_size), a.concurrency)
        coordinator = AsyncFL(server, _rows(mode, a), a.time_budget_s)
        return Assembly(device_apps(ctx), coordinator)

    return build


def assemble_hierarchical(mode: Mode) -> Callable[[BuildContext], Assembly]:
    """The cloud runs the rule over the edges; each edge runs episodes over its devices."""

    def build(ctx: BuildContext) -> Assembly:
        a: AsyncSettings = ctx.settings
        edges = ctx.system.ids("edge")
        if mode == "fedbuff" and a.cloud_buffer_size > len(edges):
            allowed = f"an integer <= the number of edges ({len(edges)})"
            raise ConfigError("asynchronous.cloud_buffer_size", a.cloud_buffer_size, allowed)
        edge_apps: dict[str, NodeApp] = {}
        for e in edges:
            edge = AsyncEdge(
                _server(ctx, _rule(ctx, mode, a.buffer_size), a.concurrency), a.edge_updates
            )
            handlers = {"edge_train": edge.train, "handover": edge.handover}
            edge_apps[e] = NodeApp(e, "edge", dict(handlers))
        cloud_rule = _rule(ctx, mode, a.cloud_buffer_size)
        server = _server(ctx, cloud_rule, len(edges), tier="edge", kind="edge_train")
        coordinator = AsyncFL(server, _rows(mode, a), a.time_budget_s)
        return Assembly(device_apps(ctx, edge_apps), coordinator)

    return build


def _check(mode: Mode) -> Callable[[Any], None]:
    """Rules across sections: K <= concurrency; no deadline or FedAsync server optimizer.
    (``federation.clients_per_round`` is not used: ``asynchronous.concurrency`` is.)"""

    def check(config: Any) -> None:
        a: AsyncSettings = config.asynchronous
        f = config.federation
        if mode == "fedbuff" and a.buffer_size > a.concurrency:
            allowed = f"an integer <= asynchronous.concurrency ({a.concurrency})"
            raise ConfigError("asynchronous.buffer_size", a.buffer_size, allowed)
        if mode == "fedasync" and f.server_optimizer not in (None, "none"):
            allowed = "unset for fedasync (it mixes each update; fedbuff takes an optimizer)"
            raise ConfigError("federation.server_optimizer", f.server_optimizer, allowed)
        if f.deadline_s is not None:  # the clock decides when updates arrive
            allowed = "unset for asynchronous algorithms (use asynchronous.time_budget_s)"
            raise ConfigError("federation.deadline_s", f.deadline_s, allowed)

    return check


_FEDASYNC = "FedAsync (Xie et al. 2019): mix each update as it arrives, weighted by staleness"
_FEDBUFF = "FedBuff (Nguyen et al. 2022): apply the mean of every K buffered updates"


def _register(mode: Mode, text: str) -> None:
    register_algorithm(
        AlgorithmSpec(
            mode,
            text + " [asynchronous]",
            assemble(mode),
            AsyncSettings,
            links=("device-cloud",),
            check=_check(mode),
        )
    )
    register_algorithm(
        AlgorithmSpec(
            f"{mode}_hier",
            f"{text}; devices -> edges (episodes) -> cloud, both asynchronous [asynchronous]",
            assemble_hierarchical(mode),
            AsyncSettings,
            roles=("edge",),
            links=("device-edge", "edge-cloud"),
            check=_check(mode),
        )
    )


_register("fedasync", _FEDASYNC)
_register("fedbuff", _FEDBUFF)

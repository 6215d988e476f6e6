"""NodeApp and NodeContext: the code that runs on one device, edge or cloud.

Handlers are ``(message, context) -> reply`` keyed by message kind; they hold no sockets
and no clocks. A handler reports the work it did with ``context.add_work`` so that the
simulated transport can charge compute time and energy for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedge.core.errors import FedgeError
from fedge.core.message import Message
from fedge.core.transport import Transport
from fedge.core.update import Work

Handler = Callable[[Message, "NodeContext"], Message]
Middleware = Callable[[Message, Message, "NodeContext"], Message]
"""(request, reply, context) -> the reply as it leaves the node (e.g. compressed updates)."""


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and platforms."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class NodeContext:
    """What a handler may use: its identity, persistent state, a seeded rng, its downstream."""

    node_id: str
    tier: str
    state: dict[str, Any]
    rng: np.random.Generator
    downstream: Transport | None = None
    work: Work = field(default_factory=Work)
    seed: int = 0
    """The node set's seed: middleware derives its own random streams from it."""

    def add_work(self, work: Work) -> None:
        self.work = self.work + work

    def now(self) -> float:
        return self.downstream.now() if self.downstream is not None else 0.0


class UnknownKindError(FedgeError):
    """A message of a kind the receiving node has no handler for."""


class NodeApp:
    """A set of handlers keyed by message kind, plus the node's persistent state.

    ``portable`` names the kinds whose reply and work depend only on the message and the app
    as built from the config (no downstream transport, no state kept between deliveries):
    an engine may run those on another process or machine (e.g. a Ray worker).

    ``middleware`` runs, in order, on every reply before it leaves the node (``finish``);
    it may keep state in the node's ``state``, so an engine that runs a portable handler
    elsewhere calls ``respond`` there and ``finish`` where the node's state lives.

    ``offload`` names the kinds whose handler keeps everything it changes in ``state`` and
    in the nodes it reaches through its downstream transport (an edge's round over its
    devices): an engine may run such a delivery, with the nodes it reaches, in another
    process, carrying their ``state`` there and back (the Ray engine's edges in parallel).
    """

    def __init__(
        self,
        node_id: str,
        tier: str,
        handlers: dict[str, Handler] | None = None,
        portable: frozenset[str] = frozenset(),
        offload: frozenset[str] = frozenset(),
    ):
        self.node_id = node_id
        self.tier = tier
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.state: dict[str, Any] = {}
        self.portable = portable
        self.middleware: list[Middleware] = []
        self.offload = offload

    def on(self, kind: str, handler: Handler) -> NodeApp:
        self.handlers[kind] = handler
        return self

    def use(self, middleware: Middleware) -> NodeApp:
        self.middleware.append(middleware)
        return self

    def handle(self, message: Message, ctx: NodeContext) -> Message:
        """The handler's reply, passed through the middleware."""
        return self.finish(message, self.respond(message, ctx), ctx)

    def finish(self, message: Message, reply: Message, ctx: NodeContext) -> Message:
        for middleware in self.middleware:
            reply = middleware(message, reply, ctx)
        return reply

    def respond(self, message: Message, ctx: NodeContext) -> Message:
        """The handler's reply alone (no middleware)."""
        handler = self.handlers.get(message.kind)
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            raise UnknownKindError(
                f"node {self.node_id} has no handler for {message.kind!r} (known: {known})"
            )
        return handler(message, ctx)

    def context(self, rng_seed: int, message: Message, downstream: Transport | None) -> NodeContext:
        """A fresh context for one delivery; the rng depends only on seed, node, round, kind."""
        rng = np.random.default_rng(
            derive_seed(rng_seed, self.node_id, message.round, message.kind)
        )
        return NodeContext(self.node_id, self.tier, self.state, rng, downstream, seed=rng_seed)


class LazyApps(Mapping[str, NodeApp]):
    """Node apps of a large population, each made the first time it is asked for.

    ``eager`` apps (the cloud, edges) exist from the start; an id in ``lazy_ids`` gets its
    app from ``make(id)`` on first use and keeps it (with its state) from then on, so a
    population of a million devices costs only the apps of the devices that were reached.
    ``on_make`` functions run on every app made (e.g. installing the client pipeline).
    Iterating lists every id but makes nothing; ``values()`` would make every app.
    """

    def __init__(
        self,
        eager: Mapping[str, NodeApp],
        lazy_ids: Sequence[str],
        make: Callable[[str], NodeApp],
        known: Callable[[str], bool],
    ) -> None:
        self._eager = dict(eager)
        self._ids = lazy_ids
        self._make = make
        self._known = known
        self._made: dict[str, NodeApp] = {}
        self._on_make: list[Callable[[NodeApp], object]] = []

    def __getitem__(self, node_id: str) -> NodeApp:
        app = self._eager.get(node_id) or self._made.get(node_id)
        if app is not None:
            return app
        if not self._known(node_id):
            raise KeyError(node_id)
        app = self._make(node_id)
        for hook in self._on_make:
            hook(app)
        self._made[node_id] = app
        return app

    def __iter__(self) -> Iterator[str]:
        yield from self._eager
        yield from self._ids

    def __len__(self) -> int:
        return len(self._eager) + len(self._ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._eager or (isinstance(node_id, str) and self._known(node_id))

    @property
    def made(self) -> int:
        """How many lazy apps exist so far (what the population costs now)."""
        return len(self._made)

    def on_make(self, hook: Callable[[NodeApp], object]) -> None:
        """Run ``hook`` on every app: the eager ones now, the lazy ones when made."""
        for app in (*self._eager.values(), *self._made.values()):
            hook(app)
        self._on_make.append(hook)


def each_app(apps: Mapping[str, NodeApp], hook: Callable[[NodeApp], object]) -> None:
    """Run ``hook`` on every app of ``apps``: now, or for a :class:`LazyApps` on its eager
    apps now and on each lazy one when it is made (so a large population stays lazy)."""
    if isinstance(apps, LazyApps):
        apps.on_make(hook)
        return
    for app in apps.values():
        hook(app)

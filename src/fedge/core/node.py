"""NodeApp and NodeContext: the code that runs on one device, edge or cloud.

Handlers are ``(message, context) -> reply`` keyed by message kind; they hold no sockets
and no clocks. A handler reports the work it did with ``context.add_work`` so that the
simulated transport can charge compute time and energy for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedge.core.errors import FedgeError
from fedge.core.message import Message
from fedge.core.population import StateStore, node_state_nbytes
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

    With a budget (:meth:`limit`), the resident apps' state is measured and, beyond the
    budget, the least recently used devices' state goes to a
    :class:`~fedge.core.population.StateStore` and their apps are dropped (an app whose
    state is empty is dropped without a write: it costs only a rebuild); the next use makes
    the app again and puts its state back. Apps are dropped only while no delivery is in
    progress (``busy``), so no handler ever holds a dropped app.
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
        self._spill: Spill | None = None

    def __getitem__(self, node_id: str) -> NodeApp:
        app = self._eager.get(node_id) or self._made.get(node_id)
        if app is not None:
            if self._spill is not None:
                self._spill.touch(self._made, node_id)
            return app
        if not self._known(node_id):
            raise KeyError(node_id)
        if self._spill is not None and self._spill.depth == 0:
            self._spill.trim(self._made)
        app = self._make(node_id)
        for hook in self._on_make:
            hook(app)
        self._made[node_id] = app
        if self._spill is not None:
            self._spill.made(node_id, app)
        return app

    def __iter__(self) -> Iterator[str]:
        yield from self._eager
        yield from self._ids

    def __len__(self) -> int:
        return len(self._eager) + len(self._ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._eager or (isinstance(node_id, str) and self._known(node_id))

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_spill": None, **state})

    def __getstate__(self) -> dict[str, Any]:
        if self._spill is not None:
            self._spill.store.commit()  # a checkpoint refers to rows that are on disk
        return dict(self.__dict__)

    @property
    def made(self) -> int:
        """How many lazy apps are in memory now (what the population costs now)."""
        return len(self._made)

    @property
    def spill(self) -> Spill | None:
        """The budget and its counters (None: unlimited)."""
        return self._spill

    def on_make(self, hook: Callable[[NodeApp], object]) -> None:
        """Run ``hook`` on every app: the eager ones now, the lazy ones when made."""
        for app in (*self._eager.values(), *self._made.values()):
            hook(app)
        self._on_make.append(hook)

    def limit(self, budget_bytes: int, store: StateStore) -> None:
        """Keep at most ``budget_bytes`` of lazy apps' state in memory, the rest in ``store``.
        Apps made before this call (changed after they were made, e.g. an attacker's
        trainer) stay in memory."""
        self._spill = Spill(budget_bytes, store)

    @contextmanager
    def busy(self) -> Iterator[None]:
        """A delivery in progress: apps are dropped only once every delivery has ended."""
        spill = self._spill
        if spill is None:
            yield
            return
        spill.depth += 1
        try:
            yield
        finally:
            spill.depth -= 1
            if spill.depth == 0:
                spill.trim(self._made)

    def evict(self, node_id: str) -> None:
        """Write ``node_id``'s state to the store now and drop its app (the next use makes it
        again with that state); only under a budget, between deliveries, for a lazy app."""
        spill = self._spill
        if spill is None or spill.depth or node_id not in spill.sizes:
            raise FedgeError(
                f"cannot evict {node_id!r}: only a lazy app in memory, between deliveries, "
                "of a population with [population] state_memory_mb"
            )
        spill.measure(self._made, node_id)
        spill.dirty.discard(node_id)
        spill.evict(self._made, node_id)

    def attach(self, directory: Path) -> None:
        """Keep spilled state in ``directory`` (the run directory), deleting rows there that
        this object does not refer to (written after the checkpoint it was loaded from)."""
        if self._spill is not None:
            self._spill.store.bind(directory)
            self._spill.store.keep_only(self._spill.spilled.values())

    def close(self) -> None:
        """The run is over (or stopped): close the store, keeping only committed rows."""
        if self._spill is not None:
            self._spill.store.close()

    def checkpointed(self) -> None:
        """A checkpoint of this object is on disk: rows only older checkpoints referred to
        are deleted."""
        if self._spill is not None:
            self._spill.store.discard(self._spill.superseded)
            self._spill.store.commit()
            self._spill.superseded.clear()


@dataclass
class Spill:
    """The budget of a :class:`LazyApps` and its bookkeeping: resident apps' measured state
    bytes in least-recently-used order, the store row of every spilled device."""

    budget: int
    store: StateStore
    sizes: dict[str, int] = field(default_factory=dict)
    """Lazy apps in memory made under the budget (least recently used first), state bytes."""
    dirty: set[str] = field(default_factory=set)
    """Apps used since their size was last measured."""
    spilled: dict[str, int] = field(default_factory=dict)
    """Device -> the store row holding its state."""
    superseded: list[int] = field(default_factory=list)
    """Rows read back since the last checkpoint (that checkpoint may still refer to them)."""
    total: int = 0
    depth: int = 0
    evictions: int = 0
    restores: int = 0
    peak: int = 0
    """The most resident state bytes measured."""

    def touch(self, made: dict[str, NodeApp], node_id: str) -> None:
        if node_id not in self.sizes:
            return  # eager, or made before the budget was set
        self.sizes[node_id] = self.sizes.pop(node_id)  # most recently used
        self.dirty.add(node_id)
        if self.depth == 0:
            self.trim(made, keep=node_id)

    def made(self, node_id: str, app: NodeApp) -> None:
        key = self.spilled.pop(node_id, None)
        if key is not None:
            app.state.update(self.store.get(key))
            self.superseded.append(key)
            self.restores += 1
        self.sizes[node_id] = 0
        self.dirty.add(node_id)

    def trim(self, made: dict[str, NodeApp], keep: str | None = None) -> None:
        """Measure the apps used since the last trim (dropping those with an empty state),
        then drop apps, least recently used first, while the state in memory exceeds the
        budget; ``keep`` (in use now) stays."""
        used, self.dirty = self.dirty, set()
        for node_id in used:
            if node_id in self.sizes:
                self.measure(made, node_id)
                if not self.sizes[node_id] and node_id != keep:
                    self.evict(made, node_id)
        self.peak = max(self.peak, self.total)
        while self.total > self.budget:
            oldest = next(iter(self.sizes))
            if oldest == keep:
                break
            self.evict(made, oldest)
        if keep is not None:
            self.dirty.add(keep)  # in use now: measured again next time

    def measure(self, made: dict[str, NodeApp], node_id: str) -> None:
        """Measure a resident app's state again."""
        state = made[node_id].state
        size = node_state_nbytes(state) if state else 0
        self.total += size - self.sizes[node_id]
        self.sizes[node_id] = size

    def evict(self, made: dict[str, NodeApp], node_id: str) -> None:
        """Drop ``node_id``'s app, its state (if any) written to the store."""
        app = made.pop(node_id)
        self.total -= self.sizes.pop(node_id)
        if app.state:
            self.spilled[node_id] = self.store.put(node_id, app.state)
            self.evictions += 1


def each_app(apps: Mapping[str, NodeApp], hook: Callable[[NodeApp], object]) -> None:
    """Run ``hook`` on every app of ``apps``: now, or for a :class:`LazyApps` on its eager
    apps now and on each lazy one when it is made (so a large population stays lazy)."""
    if isinstance(apps, LazyApps):
        apps.on_make(hook)
        return
    for app in apps.values():
        hook(app)

"""The in-process transport: handlers run directly in this process, nothing is modelled."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

from fedge.core.errors import FedgeError
from fedge.core.message import Message
from fedge.core.node import LazyApps, NodeApp
from fedge.core.transport import Transport
from fedge.core.update import Work

Membership = Callable[[str, str, float], list[str]]
"""(at node, tier, time_s) -> the nodes of ``tier`` visible from ``at`` at that time."""


class NodeSet:
    """The apps of every node that lives in this process, and how to deliver to them."""

    def __init__(self, apps: Mapping[str, NodeApp], seed: int) -> None:
        self.apps = apps if isinstance(apps, LazyApps) else dict(apps)
        self.seed = seed

    def deliver(self, message: Message, downstream: Transport | None) -> tuple[Message, Work]:
        """Run the destination's handler; returns its reply and the work it reported."""
        with self._busy():
            app = self._app(message.dst)
            ctx = app.context(self.seed, message, downstream)
            return app.handle(message, ctx), ctx.work

    def respond(self, message: Message) -> tuple[Message, Work]:
        """A portable handler's reply without the node's middleware (run where the node's
        state lives, by ``NodeApp.finish``), and its work."""
        with self._busy():
            app = self._app(message.dst)
            ctx = app.context(self.seed, message, None)
            return app.respond(message, ctx), ctx.work

    def _busy(self) -> AbstractContextManager[None]:
        """While a delivery runs, a population under a memory budget drops no app."""
        return self.apps.busy() if isinstance(self.apps, LazyApps) else nullcontext()

    def _app(self, node_id: str) -> NodeApp:
        app = self.apps.get(node_id)
        if app is None:
            raise FedgeError(f"no node {node_id!r} in this deployment")
        return app

    def prefetch(self, messages: Sequence[Message]) -> None:
        """Messages about to be delivered, in order; an engine may start their portable work
        early (in parallel). In-process there is nothing to start."""

    def offloads(self, message: Message) -> bool:
        """Whether this node set may run ``message`` elsewhere with the nodes it reaches
        (``prefetch_nested``); in-process, never."""
        return False

    def prefetch_nested(
        self, messages: Sequence[Message], arrivals: Sequence[float], system: object
    ) -> None:
        """Offloadable messages about to be delivered, each with the simulated time it will
        arrive at its node and the system model its nested deliveries are charged on; an
        engine may start them early. In-process there is nothing to start."""

    def close(self) -> None:
        """Release what the node set holds outside this process (in-process: the file of a
        population's spilled device state)."""
        if isinstance(self.apps, LazyApps):
            self.apps.close()


def flat_membership(tiers: Mapping[str, Sequence[str]]) -> Membership:
    """Every node sees every node of a tier (no topology): the simplest deployment."""
    return lambda at, tier, t_s: [n for n in tiers.get(tier, ()) if n != at]


class LocalTransport:
    """Delivers in-process, in send order; counts messages and bytes but no time."""

    def __init__(self, nodes: NodeSet, membership: Membership, node_id: str = "cloud") -> None:
        self._nodes = nodes
        self._membership = membership
        self._node_id = node_id
        self._pending: deque[Message] = deque()
        self._stats: Counter[str] = Counter()

    @property
    def node_id(self) -> str:
        return self._node_id

    def at(self, node_id: str) -> LocalTransport:
        child = LocalTransport(self._nodes, self._membership, node_id)
        child._stats = self._stats
        return child

    def nodes(self, tier: str) -> list[str]:
        return self._membership(self._node_id, tier, 0.0)

    def _one(self, message: Message) -> Message:
        self._stats["messages"] += 2
        self._stats["bytes"] += message.nbytes()
        reply, _work = self._nodes.deliver(message, self.at(message.dst))
        self._stats["bytes"] += reply.nbytes()
        return reply

    def send(self, messages: Sequence[Message], deadline_s: float | None = None) -> list[Message]:
        self._nodes.prefetch(messages)
        return [self._one(m) for m in messages]

    def submit(self, messages: Sequence[Message]) -> None:
        self._nodes.prefetch(messages)
        self._pending.extend(self._one(m) for m in messages)

    def next_reply(self) -> Message | None:
        return self._pending.popleft() if self._pending else None

    def now(self) -> float:
        return 0.0

    def stats(self) -> Mapping[str, float]:
        return {k: float(v) for k, v in self._stats.items()}

    def estimate_round_trip_s(
        self, dst: str, nbytes_down: int, flops: float, nbytes_up: int, round: int
    ) -> float | None:
        """Nothing is modelled in-process: every round trip is estimated at 0 s."""
        return 0.0

"""Routing the calls children start: answer here, pass down to a child, or up to a parent.

A child reaches nodes other than its parent by calls it starts on its own stream
(``Attachment.request``, PEER_REQUEST frames). The parent's hub hands each to its
``Router``, which first asks the deployment's policy (``admit``: may this child send this
message, as this source, to this destination?) and then delivers it:

- to the node's own app, when the node is the destination (a device answering a peer that
  dialled it directly, on an executor of its own so that it never waits behind the node's
  long requests);
- down its hub, when the destination lives below the node (a device behind an edge);
- up, through the attachment that reaches the destination (an edge passing a device's call to
  the edge of the destination device).

A refusal, a missing route or a failure on the way answers the caller at once with a
PEER_ERROR that says why (``CallFailed`` at the caller); nothing waits for a reply that
cannot come. ``Reach`` turns such calls into what a ``GrpcTransport`` sends through, so a
device's handlers address their peers with the ordinary Transport API.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future

from fedge.core.message import Message
from fedge.runtime.grpc.attach import Attachment, CallFailed
from fedge.runtime.grpc.figures import NodeFigures
from fedge.runtime.grpc.hub import Hub
from fedge.runtime.grpc.settings import GrpcSettings, LoopThread

Admit = Callable[[Message, str], str | None]
"""(a call, the child it came from) -> None to route it, or the reason it is refused."""


class Router:
    """Where the calls that reach node ``node_id`` go (see the module doc).

    ``below(dst)``: whether ``dst`` is reached down ``hub``; ``above(dst)``: the attachment
    whose parent reaches ``dst`` (None: none does); ``local``: the node's own handler and the
    executor it runs on (None: the node answers no calls itself).
    """

    def __init__(
        self,
        node_id: str,
        settings: GrpcSettings,
        admit: Admit,
        hub: Hub | None = None,
        below: Callable[[str], bool] = lambda dst: False,
        above: Callable[[str], Attachment | None] = lambda dst: None,
        local: tuple[Callable[[Message], Message], Executor] | None = None,
    ) -> None:
        self.node_id = node_id
        self.settings = settings
        self.admit = admit
        self.hub = hub
        self.below = below
        self.above = above
        self.local = local
        if hub is not None:
            hub.route = self.take

    async def take(self, message: Message, came_from: str) -> Message:
        """A call child ``came_from`` started: checked by the policy, then delivered."""
        refused = self.admit(message, came_from)
        if refused is not None:
            raise CallFailed(f"{self.node_id}: {refused}")
        return await self.deliver(message)

    async def deliver(self, message: Message) -> Message:
        """``message`` to its destination (also the parent's requests a relay passes on)."""
        if message.dst == self.node_id and self.local is not None:
            handle, executor = self.local
            return await asyncio.get_running_loop().run_in_executor(executor, handle, message)
        if self.hub is not None and self.below(message.dst):
            return await asyncio.wait_for(self.hub.forward(message), self.settings.call_timeout_s)
        attachment = self.above(message.dst)
        if attachment is not None:
            return await attachment.request(message)
        raise CallFailed(f"{self.node_id} has no route to {message.dst!r}")


class Reach:
    """The ``Caller`` of a transport whose messages are calls a child starts.

    ``members`` lists what ``nodes(tier)`` answers (a device's peers in the system model);
    ``through(dst)`` is the attachment a message for ``dst`` leaves by (the device's edge,
    or the stream it dialled to that peer), None when there is none: then the call fails
    at once, naming the destination.
    """

    def __init__(
        self,
        node_id: str,
        settings: GrpcSettings,
        loop: LoopThread,
        members: Mapping[str, Sequence[str]],
        through: Callable[[str], Attachment | None],
    ) -> None:
        self.node_id = node_id
        self.settings = settings
        self.counters: Counter[str] = Counter()
        self.figures: NodeFigures | None = None
        """Calls a child starts are not charged here: the routes they take report them."""
        self._loop = loop
        self._members = {tier: list(ids) for tier, ids in members.items()}
        self._through = through

    def attached(self, tier: str) -> list[str]:
        return list(self._members.get(tier, ()))

    def seen(self, tier: str) -> bool:
        return False  # fixed members: nothing to wait for

    def wait_for_any(self, tier: str, timeout_s: float) -> list[str]:
        return self.attached(tier)

    def call(self, message: Message, parts: Sequence[bytes] | None = None) -> Future[Message]:
        attachment = self._through(message.dst)
        if attachment is None:
            failed: Future[Message] = Future()
            failed.set_exception(CallFailed(f"{self.node_id} has no route to {message.dst!r}"))
            return failed
        self.counters["messages"] += 2
        self.counters["bytes_sent"] += message.nbytes()
        return self._loop.submit(attachment.request(message))


class Behind:
    """A hub as a ``Caller`` whose ``nodes(tier)`` are the deployment's nodes of the tiers
    in ``members``, attached or behind a child (a driver reaching devices via their edges)."""

    def __init__(self, hub: Hub, members: Mapping[str, Sequence[str]]) -> None:
        self.settings = hub.settings
        self.counters = hub.counters
        self._hub = hub
        self._members = {tier: list(ids) for tier, ids in members.items()}

    @property
    def figures(self) -> NodeFigures | None:
        return self._hub.figures

    def call(self, message: Message, parts: Sequence[bytes] | None = None) -> Future[Message]:
        return self._hub.call(message, parts)

    def attached(self, tier: str) -> list[str]:
        if tier in self._members:
            return list(self._members[tier])
        return self._hub.attached(tier)

    def seen(self, tier: str) -> bool:
        return tier not in self._members and self._hub.seen(tier)

    def wait_for_any(self, tier: str, timeout_s: float) -> list[str]:
        if tier in self._members:
            return self.attached(tier)
        return self._hub.wait_for_any(tier, timeout_s)

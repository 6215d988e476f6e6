"""GrpcTransport: the Transport of a node whose children are real processes.

``send`` starts one call per message through the node's hub and returns the replies in the
order they arrived; a reply that misses the deadline, or whose node dropped and did not
come back, is absent, as on the simulated engine. Time is the wall clock since the
transport started. With the hub's figures (``fedge.runtime.grpc.figures``), ``stats`` has
the local engine's per-tier byte keys, counted by every process below this one, and the
modelled and measured latencies; without them, the bytes this process moved on the wire
(message bytes of the fedge codec, without TLS and HTTP/2 framing). A batch of messages is
encoded once: messages that share a model's tensors share their bytes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Protocol

from fedge.core.message import Message
from fedge.core.transport import ABSENT
from fedge.runtime.grpc.figures import NodeFigures
from fedge.runtime.grpc.settings import GrpcSettings

log = logging.getLogger("fedge.grpc")


class Caller(Protocol):
    """What a GrpcTransport calls through: a hub, or the calls a child starts (route.Reach)."""

    settings: GrpcSettings
    counters: Counter[str]

    @property
    def figures(self) -> NodeFigures | None:
        """Where this node's byte, energy and latency figures add up (None: not kept)."""
        ...

    def call(self, message: Message, parts: Sequence[bytes] | None = None) -> Future[Message]:
        """Send ``message`` (``parts``: already encoded) and resolve with its reply."""
        ...

    def attached(self, tier: str) -> list[str]: ...

    def seen(self, tier: str) -> bool:
        """Whether a node of ``tier`` was ever reachable (a partition can take them all)."""
        ...

    def wait_for_any(self, tier: str, timeout_s: float) -> list[str]:
        """Wait up to ``timeout_s`` for a node of ``tier``; those reachable then."""
        ...


class GrpcTransport:
    """A transport at ``node_id`` that reaches the children attached to its hub."""

    checkpoint_by_reference = True
    """A live connection: a restarted process makes a new one (checkpoints name it)."""

    def __init__(
        self,
        hub: Caller,
        node_id: str,
        order: Sequence[str] = (),
        started_s: float | None = None,
    ) -> None:
        self._hub = hub
        self._rank = {n: i for i, n in enumerate(order)}
        self._node_id = node_id
        self._started_s = time.monotonic() if started_s is None else started_s
        self._outstanding: deque[Future[Message]] = deque()
        self._asked: dict[Future[Message], Message] = {}
        """Submitted requests that set ``report_absent``: a failed call answers ``absent``."""
        self._late = 0
        self._failed = 0
        self.rejoin_s = 0.0
        """How long ``nodes`` waits for a tier whose children are all away (0: not at all;
        the cloud waits ``reattach_s``, an edge whose devices moved on does not)."""
        self.waited_s = 0.0
        """Wall seconds spent waiting for replies (so a handler's own time can be told)."""

    def _calls(self, messages: Sequence[Message]) -> list[Future[Message]]:
        """Start one call per message; tensors the messages share are encoded once."""
        cache: dict[int, bytes] = {}
        return [self._hub.call(m, m.encode_parts(cache)) for m in messages]

    @property
    def node_id(self) -> str:
        return self._node_id

    def nodes(self, tier: str) -> list[str]:
        """Attached children of ``tier`` in the deployment's order (then by name).

        When every child of ``tier`` that ever attached is away (a partition, a restart of
        the only edge), it waits up to ``rejoin_s`` for one to come back rather than run a
        round with nobody."""
        attached = self._hub.attached(tier)
        if not attached and self.rejoin_s > 0 and self._hub.seen(tier):
            attached = self._hub.wait_for_any(tier, self.rejoin_s)
        rank = self._rank
        return sorted(attached, key=lambda n: (rank.get(n, len(rank)), n))

    def send(self, messages: Sequence[Message], deadline_s: float | None = None) -> list[Message]:
        limit_s = self._hub.settings.call_timeout_s
        if deadline_s is not None:
            limit_s = min(limit_s, deadline_s)
        started_s = time.monotonic()
        calls = self._calls(messages)
        finish_s = time.monotonic() + limit_s
        replies: list[Message] = []
        waiting = set(calls)
        while waiting:
            done, waiting = wait(waiting, finish_s - time.monotonic(), FIRST_COMPLETED)
            if not done:
                break
            replies.extend(self._results(done))
        for call in waiting:
            call.cancel()
        self._late += len(waiting)
        if waiting:  # stragglers: the round goes on without them
            late = sorted(m.dst for m, c in zip(messages, calls, strict=True) if c in waiting)
            log.info("%s: %s missed the deadline of %.1f s", self._node_id, late, limit_s)
        self.waited_s += time.monotonic() - started_s
        return replies

    def _results(self, done: set[Future[Message]]) -> list[Message]:
        out = []
        for call in done:
            try:
                out.append(call.result())
            except Exception as exc:  # a failed call is an absent reply, as documented
                self._failed += 1
                log.info("%s: a call failed: %s", self._node_id, exc)
        return out

    def submit(self, messages: Sequence[Message]) -> None:
        for message, call in zip(messages, self._calls(messages), strict=True):
            if message.payload.get("report_absent"):
                self._asked[call] = message
            self._outstanding.append(call)

    def next_reply(self) -> Message | None:
        while self._outstanding:
            started_s = time.monotonic()
            done, _ = wait(self._outstanding, self._hub.settings.call_timeout_s, FIRST_COMPLETED)
            self.waited_s += time.monotonic() - started_s
            if not done:
                return None
            call = next(iter(done))
            self._outstanding.remove(call)
            asked = self._asked.pop(call, None)
            replies = self._results({call})
            if replies:
                return replies[0]
            if asked is not None:  # its node failed or left: the sender frees its slot
                return asked.reply(ABSENT)
        return None

    def now(self) -> float:
        return time.monotonic() - self._started_s

    def stats(self) -> Mapping[str, float]:
        counters = self._hub.counters
        figures = self._hub.figures
        return {
            "bytes_down": float(counters["bytes_sent"]),
            "bytes_up": float(counters["bytes_received"]),
            "messages": float(counters["messages"]),
            "rejected": float(counters["rejected"]),
            "late": float(self._late),
            "dropped": float(self._failed),
            "sim_time_s": self.now(),
            **(figures.snapshot() if figures is not None else {}),
        }

    def estimate_round_trip_s(
        self, dst: str, nbytes_down: int, flops: float, nbytes_up: int, round: int
    ) -> float | None:
        """None: time here is the wall clock, and there is no model to predict it from."""
        return None

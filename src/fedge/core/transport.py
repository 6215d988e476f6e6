"""The Transport protocol: the single seam between algorithms and where they run.

A transport is always *at* one node (``node_id``) and sends from it. ``nodes(tier)`` lists
the nodes of a tier this node can reach now: from the cloud, every node; from an edge, its
attached devices, its neighbour edges and the cloud. Replies come back in (simulated)
arrival order; a reply that misses the deadline, or a node that dropped out, is absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from fedge.core.message import Message

TIERS = ("cloud", "edge", "device")
SYNC = "sync"
"""The virtual node that drives decentralized protocols: the synchronous round barrier
(the simulated transport charges nothing for its messages)."""
ABSENT = "absent"
"""Kind of the reply a transport returns, when the request's payload sets ``report_absent``,
for a request that will get no reply: its node was unavailable or handed the work over to
another edge (asynchronous protocols free the node's slot)."""


@runtime_checkable
class Transport(Protocol):
    """What a coordinator may do: list peers, send and receive messages, read the time."""

    @property
    def node_id(self) -> str: ...

    def nodes(self, tier: str) -> list[str]:
        """Nodes of ``tier`` reachable from this node now, in a stable order."""
        ...

    def send(self, messages: Sequence[Message], deadline_s: float | None = None) -> list[Message]:
        """Deliver ``messages`` in parallel and wait for the replies (arrival order).

        ``deadline_s`` counts from now; late replies are dropped and the wait ends then.
        """
        ...

    def submit(self, messages: Sequence[Message]) -> None:
        """Start ``messages`` without waiting (asynchronous protocols)."""
        ...

    def next_reply(self) -> Message | None:
        """The earliest outstanding reply of ``submit``; None when nothing is outstanding."""
        ...

    def now(self) -> float:
        """Seconds since the start of the run (simulated on the local engine)."""
        ...

    def stats(self) -> Mapping[str, float]:
        """Cumulative accounting: bytes per tier and direction, energy, time."""
        ...

    def estimate_round_trip_s(
        self, dst: str, nbytes_down: int, flops: float, nbytes_up: int, round: int
    ) -> float | None:
        """Modelled seconds, from now, for ``nbytes_down`` to reach ``dst``, ``flops`` of work
        there in round ``round`` and ``nbytes_up`` to come back; charges nothing.

        For planning (deadline-aware selection): the simulated engine answers from its system
        model, the in-process one 0.0 (nothing is modelled), a wall-clock engine None (no model).
        """
        ...

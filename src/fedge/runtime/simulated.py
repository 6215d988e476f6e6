"""The simulated transport: real computation, modelled time, bytes and energy.

Every delivery is charged on the system model: the request travels its route, the
receiver computes (the FLOPs its handler reported), and the reply travels back from the
receiver's position at that moment (a vehicle that moved uploads through its new edge).
Each transport is at one node and has its own clock cursor; a handler that sends further
(an edge coordinating its devices) gets a child transport whose clock starts when the
request arrived, so nested protocols take the right simulated time.

Interpretation: a reply that misses the deadline is still charged (the device transmitted
it) but is discarded; a node that is unavailable in the message's round neither receives
nor answers, and costs nothing.

Handover: a device asked by edge i that is attached to edge j when its upload starts follows
the request's ``on_handover`` policy: ``relay`` (default) uploads to j, which forwards over
the backhaul to i; ``redirect`` delivers the reply to j as a ``handover`` message instead (j
decides what to do with it, i never gets it); ``drop`` loses it.

Transmission latency follows §5 of the MS-FL paper: for every round index, the slowest model
transfer of each component (device->edge upload, edge<->edge exchange, edge->cloud, cloud->edge) is
added up. A model transfer is a message whose payload carries an ``Update`` (any codec);
triggers and metrics are charged in time and bytes but are not transmission latency.
Bytes are the encoded message's; ``bytes_dense_*`` counts what the same messages would
have cost with every update dense, so a summary shows the saving of compression per tier. Direct
device-to-device model transfers count as ``latency_d2d_s``; relayed ones count under the
upload / exchange components of the hops they take.

Decentralized protocols (no server) are driven from ``SYNC``, a virtual node that stands for
the synchronous round barrier: a transport whose node is ``SYNC`` sees every node of a tier,
its messages to nodes and their replies cost no time, bytes or energy (and are not counted as
messages), but the receiver's compute and everything it sends through its own transport
(starting at the driver's current time) are charged as usual; ``send`` returns when the last
reply is done, deadlines and availability still apply. A device's transport sees its peer
devices (``SystemModel.peers``) in the ``device`` tier.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedge.core.message import Message
from fedge.core.transport import ABSENT, SYNC
from fedge.runtime.local import NodeSet
from fedge.system.clock import SimClock
from fedge.system.energy import EnergyLedger
from fedge.system.model import SystemModel, TransferCost


@dataclass
class Ledger:
    """Cumulative accounting shared by a transport and all its children."""

    counters: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    energy: EnergyLedger = field(default_factory=EnergyLedger)
    slowest_s: dict[tuple[str, int], float] = field(default_factory=dict)
    """(latency component, round index) -> the slowest model transfer of that component."""

    def charge_transfer(
        self, cost: TransferCost, system: SystemModel, message: Message | None = None
    ) -> None:
        carries_model = message is not None and message.carries_model()
        compressed = message is not None and message.compressed()
        dense = message.dense_nbytes() if compressed and message is not None else None
        for hop in cost.hops:
            tier = hop.tier.replace("-", "_")
            self.counters[f"bytes_{hop.direction}_{tier}"] += hop.nbytes
            self.counters[f"bytes_dense_{hop.direction}_{tier}"] += dense or hop.nbytes
            self.counters[f"airtime_s_{tier}"] += hop.time_s
            if hop.tx_energy_j:
                self.energy.charge(hop.src, system.tier(hop.src), "radio", hop.tx_energy_j)
            component = _COMPONENTS.get((hop.tier, hop.direction))
            if carries_model and component is not None and message is not None:
                self.note_latency(component, message.round, hop.time_s)

    def note_latency(self, component: str, round_index: int, time_s: float) -> None:
        key = (component, round_index)
        self.slowest_s[key] = max(self.slowest_s.get(key, 0.0), time_s)

    def latency(self) -> dict[str, float]:
        """Cumulative transmission latency per component and in total."""
        out = {f"latency_{c}_s": 0.0 for c in sorted(set(_COMPONENTS.values()) | {"handover"})}
        for (component, _), time_s in self.slowest_s.items():
            out[f"latency_{component}_s"] += time_s
        out["transmission_latency_s"] = sum(v for k, v in out.items() if k != "latency_handover_s")
        return out

    def snapshot(self) -> dict[str, float]:
        out = {k: float(v) for k, v in sorted(self.counters.items())}
        out["bytes_up"] = sum(v for k, v in out.items() if k.startswith("bytes_up_"))
        out["bytes_down"] = sum(v for k, v in out.items() if k.startswith("bytes_down_"))
        out["bytes_peer"] = sum(v for k, v in out.items() if k.startswith("bytes_peer_"))
        out["bytes_dense_up"] = sum(v for k, v in out.items() if k.startswith("bytes_dense_up_"))
        out["energy_j"] = self.energy.total_j()
        for tier, joules in sorted(self.energy.by_tier().items()):
            out[f"energy_j_{tier}"] = joules
        out.update(self.latency())
        return out


Charge = tuple[str, tuple[Any, ...]]
"""One ledger operation: ("count", (key, amount)), ("energy", (node, tier, kind, joules)) or
("latency", (component, round, seconds))."""


class _CountLog(defaultdict[str, float]):
    """Counters that record every increment: each key reads 0, so ``c[k] += v`` stores
    exactly ``v``, which is logged as the increment."""

    def __init__(self, log: list[Charge]) -> None:
        super().__init__(float)
        self._log = log

    def __getitem__(self, key: str) -> float:
        return 0.0

    def __setitem__(self, key: str, value: float) -> None:
        self._log.append(("count", (key, value)))


class _EnergyLog(EnergyLedger):
    def __init__(self, log: list[Charge]) -> None:
        super().__init__()
        self._log = log

    def charge(self, node_id: str, tier: str, kind: str, energy_j: float) -> None:
        self._log.append(("energy", (node_id, tier, kind, energy_j)))


class RecordingLedger(Ledger):
    """A ledger that only records its charges, in order, so that another process's ledger
    can ``replay`` them: the same float additions in the same order give the same totals
    (an edge's round run on a Ray worker is charged on the driver's ledger)."""

    def __init__(self) -> None:
        self.log: list[Charge] = []
        super().__init__(_CountLog(self.log), _EnergyLog(self.log))

    def note_latency(self, component: str, round_index: int, time_s: float) -> None:
        self.log.append(("latency", (component, round_index, time_s)))


def replay(ledger: Ledger, log: Sequence[Charge]) -> None:
    """Apply a ``RecordingLedger``'s charges to ``ledger``, in their order."""
    for op, args in log:
        if op == "count":
            ledger.counters[args[0]] += args[1]
        elif op == "energy":
            ledger.energy.charge(*args)
        else:
            ledger.note_latency(*args)


_COMPONENTS = {
    ("device-edge", "up"): "upload",
    ("edge-edge", "peer"): "exchange",
    ("edge-cloud", "up"): "cloud_up",
    ("edge-cloud", "down"): "cloud_down",
    ("device-device", "peer"): "d2d",
}
HANDOVER_POLICIES = ("relay", "redirect", "drop")


@dataclass(frozen=True)
class _Arrival:
    time_s: float
    order: int
    reply: Message


class SimulatedTransport:
    """A transport at one node that charges modelled time, bytes and energy."""

    def __init__(
        self,
        nodes: NodeSet,
        system: SystemModel,
        node_id: str = "cloud",
        start_s: float = 0.0,
        ledger: Ledger | None = None,
    ) -> None:
        self._nodes = nodes
        self._system = system
        self._node_id = node_id
        self._clock = SimClock(start_s)
        self._ledger = ledger if ledger is not None else Ledger()
        self._submitted = 0

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    def at(self, node_id: str, start_s: float) -> SimulatedTransport:
        """A transport at ``node_id`` whose clock starts at ``start_s``, sharing the ledger."""
        return SimulatedTransport(self._nodes, self._system, node_id, start_s, self._ledger)

    def nodes(self, tier: str) -> list[str]:
        return visible_nodes(self._system, self._node_id, tier, self.now())

    def now(self) -> float:
        return self._clock.now()

    def advance_to(self, time_s: float) -> None:
        """Let simulated time pass at this node (e.g. waiting for the next round)."""
        self._clock.advance_to(max(time_s, self.now()))

    def _deliver(self, message: Message, start_s: float, order: int) -> _Arrival | None:
        if not self._system.is_available(message.dst, message.round):
            self._ledger.counters["dropped"] += 1
            return self._absent(message, start_s, order)
        down = self._charge(message, start_s)
        reply, done_s = self._handle(message, start_s + down)
        if reply is None:  # handed over to the edge it moved to
            return self._absent(message, done_s, order)
        return _Arrival(done_s + self._charge(reply, done_s), order, reply)

    def _handle(self, message: Message, arrive_s: float) -> tuple[Message | None, float]:
        """Run the receiver's handler from ``arrive_s`` and charge its compute; the reply
        (None when a moved device's reply was handed over) and when it leaves."""
        child = self.at(message.dst, arrive_s)
        reply, work = self._nodes.deliver(message, child)
        cost = self._system.compute(message.dst, work.flops, message.round)
        self._ledger.energy.charge(
            message.dst, self._system.tier(message.dst), "compute", cost.energy_j
        )
        self._ledger.counters["flops"] += work.flops
        done_s = child.now() + cost.time_s
        if SYNC not in (message.src, message.dst):
            self._ledger.counters["messages"] += 2
        moved_to = self._moved(message, done_s)
        if moved_to is not None:
            self._hand_over(message, reply, moved_to, done_s)
            return None, done_s
        return reply, done_s

    def _deliver_all(
        self, messages: Sequence[Message], start_s: float, first: int
    ) -> list[_Arrival | None]:
        """Deliver a batch that starts at ``start_s``. With shared links
        (``system.links.shared``) the requests' transfers are priced together, then every
        handler runs, then the replies' transfers are priced together, so transfers that
        overlap share their links; otherwise each delivery is priced alone."""
        if not self._system.links.shared:
            return [self._deliver(m, start_s, first + i) for i, m in enumerate(messages)]
        out: list[_Arrival | None] = [None] * len(messages)
        sent = [i for i, m in enumerate(messages) if self._system.is_available(m.dst, m.round)]
        for i in sorted(set(range(len(messages))) - set(sent)):
            self._ledger.counters["dropped"] += 1
            out[i] = self._absent(messages[i], start_s, first + i)
        downs = self._charge_all([messages[i] for i in sent], [start_s] * len(sent))
        handled = [
            (i, self._handle(messages[i], start_s + d)) for i, d in zip(sent, downs, strict=True)
        ]
        done: list[tuple[int, Message, float]] = []
        for i, (reply, done_s) in handled:
            if reply is None:  # handed over to the edge it moved to
                out[i] = self._absent(messages[i], done_s, first + i)
            else:
                done.append((i, reply, done_s))
        ups = self._charge_all([r for _, r, _ in done], [t for _, _, t in done])
        for (i, reply, done_s), up in zip(done, ups, strict=True):
            out[i] = _Arrival(done_s + up, first + i, reply)
        return out

    def _charge_all(self, messages: Sequence[Message], starts: Sequence[float]) -> list[float]:
        """``_charge`` for transfers that may overlap: priced together by the system model."""
        paid = [i for i, m in enumerate(messages) if SYNC not in (m.src, m.dst)]
        batch = [(messages[i].src, messages[i].dst, messages[i].nbytes(), starts[i]) for i in paid]
        times = [0.0] * len(messages)
        for i, cost in zip(paid, self._system.transfers(batch), strict=True):
            self._ledger.charge_transfer(cost, self._system, messages[i])
            times[i] = cost.time_s
        return times

    def _absent(self, message: Message, time_s: float, order: int) -> _Arrival | None:
        """No reply will come: a sender that asked (``report_absent``, asynchronous protocols
        that must free the device's slot) learns it at ``time_s`` from an ``absent`` reply
        that costs nothing (the device refused the task, or it left for another edge)."""
        if not message.payload.get("report_absent"):
            return None
        return _Arrival(time_s, order, message.reply(ABSENT))

    def _charge(self, message: Message, start_s: float) -> float:
        """Charge a message's transfer and return its time; free to and from ``SYNC``."""
        if SYNC in (message.src, message.dst):
            return 0.0
        cost = self._system.transfer(message.src, message.dst, message.nbytes(), start_s)
        self._ledger.charge_transfer(cost, self._system, message)
        return cost.time_s

    def _moved(self, message: Message, t_s: float) -> str | None:
        """The device's new edge when it left the asking edge's coverage (else None)."""
        policy = message.payload.get("on_handover", "relay")
        if policy == "relay" or SYNC in (message.src, message.dst):
            return None
        if self._system.tier(message.dst) != "device":
            return None
        if self._system.tier(message.src) != "edge":
            return None
        now_at = self._system.attachment(message.dst, t_s)
        return now_at if now_at != message.src else None

    def _hand_over(self, request: Message, reply: Message, edge: str, t_s: float) -> None:
        """Deliver a moved device's reply to its new edge, or lose it (policy ``drop``)."""
        if request.payload.get("on_handover") == "drop":
            self._ledger.counters["handover_lost"] += 1
            return
        payload = {**reply.payload, "origin_edge": request.src}
        if "version" in request.payload:  # the model version the work started from
            payload["version"] = request.payload["version"]
        moved = Message(reply.src, edge, "handover", reply.round, payload)
        up = self._system.transfer(moved.src, moved.dst, moved.nbytes(), t_s)
        self._ledger.charge_transfer(up, self._system)
        self._ledger.note_latency("handover", reply.round, up.time_s)
        self._nodes.deliver(moved, self.at(edge, t_s + up.time_s))
        self._ledger.counters["handover_redirected"] += 1

    def _prefetch(self, messages: Sequence[Message]) -> None:
        """Let the node set start the work of the messages that will be delivered (in order)."""
        is_up = self._system.is_available
        up = [m for m in messages if is_up(m.dst, m.round)]
        self._nodes.prefetch(up)
        if any(self._nodes.offloads(m) for m in up):
            timed = zip(up, self._arrivals(up), strict=True)
            chosen = [(m, t) for m, t in timed if self._nodes.offloads(m)]
            self._nodes.prefetch_nested(
                [m for m, _ in chosen], [t for _, t in chosen], self._system
            )

    def _arrivals(self, messages: Sequence[Message]) -> list[float]:
        """When each request of a batch sent now reaches its node, priced as ``_deliver_all``
        prices it (the system model's costs are pure), without charging anything."""
        start_s = self.now()
        paid = [i for i, m in enumerate(messages) if SYNC not in (m.src, m.dst)]
        batch = [(messages[i].src, messages[i].dst, messages[i].nbytes(), start_s) for i in paid]
        if self._system.links.shared:
            costs = self._system.transfers(batch)
        else:
            costs = [self._system.transfer(*hop) for hop in batch]
        out = [start_s + 0.0] * len(messages)
        for i, cost in zip(paid, costs, strict=True):
            out[i] = start_s + cost.time_s
        return out

    def send(self, messages: Sequence[Message], deadline_s: float | None = None) -> list[Message]:
        self._prefetch(messages)
        start_s = self.now()
        arrivals = self._deliver_all(messages, start_s, 0)
        landed = sorted((a for a in arrivals if a is not None), key=lambda a: (a.time_s, a.order))
        limit_s = start_s + deadline_s if deadline_s is not None else math.inf
        kept = [a for a in landed if a.time_s <= limit_s]
        self._ledger.counters["late"] += len(landed) - len(kept)
        waited_out = len(kept) < len(messages) and math.isfinite(limit_s)
        end_s = limit_s if waited_out else max((a.time_s for a in kept), default=start_s)
        self._clock.advance_to(max(end_s, start_s))
        return [a.reply for a in kept]

    def submit(self, messages: Sequence[Message]) -> None:
        self._prefetch(messages)
        arrivals = self._deliver_all(messages, self.now(), self._submitted)
        self._submitted += len(messages)
        for arrival in arrivals:
            if arrival is not None:
                self._clock.schedule(arrival.time_s, arrival.reply)

    def next_reply(self) -> Message | None:
        if not len(self._clock):
            return None
        _time_s, reply = self._clock.pop()
        assert isinstance(reply, Message)
        return reply

    def stats(self) -> Mapping[str, float]:
        return {**self._ledger.snapshot(), "sim_time_s": self.now()}

    def estimate_round_trip_s(
        self, dst: str, nbytes_down: int, flops: float, nbytes_up: int, round: int
    ) -> float | None:
        """What a delivery to ``dst`` starting now would take, priced as ``_deliver`` prices
        it (request route now, compute with the round's slowdown, reply route when the work
        is done), without charging the ledger or moving the clock. Ignores availability and
        handover policies (a moved device's reply is priced on its route back, as relayed)."""
        system, here, start_s = self._system, self._node_id, self.now()
        free = SYNC in (here, dst)
        down_s = 0.0 if free else system.transfer(here, dst, nbytes_down, start_s).time_s
        done_s = start_s + down_s + system.compute(dst, flops, round).time_s
        up_s = 0.0 if free else system.transfer(dst, here, nbytes_up, done_s).time_s
        return done_s + up_s - start_s


def visible_nodes(system: SystemModel, at: str, tier: str, t_s: float) -> list[str]:
    """Who ``at`` can address in ``tier`` at ``t_s``: the cloud and ``SYNC`` see all, an edge
    its own devices and neighbour edges, a device its edge and its peer devices."""
    if at == SYNC:
        return system.ids(tier)
    own_tier = system.tier(at)
    if own_tier == "cloud" or tier == "cloud":
        ids = system.ids(tier)  # ``at`` is among them only in its own tier
        return [n for n in ids if n != at] if tier == own_tier else ids
    if own_tier == "edge":
        if tier == "device":
            return system.attached_devices(at, t_s)
        return system.neighbors(at)
    if tier == "edge":
        return [system.attachment(at, t_s)]
    return system.peers(at, t_s) if tier == "device" else []

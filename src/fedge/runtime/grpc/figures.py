"""What every process of a gRPC deployment counts, and how it reaches the cloud's rows.

Each node (cloud, edge, device) keeps a ``NodeFigures``. A message is charged once, by the
node that sends it, exactly as the local engine charges it: its fedge-codec bytes
(``Message.nbytes()``) on the route the system model gives from sender to receiver, so the
per-tier keys (``bytes_up_device_edge``, ``bytes_down_edge_cloud``, ...) mean the same as on
the local engine. The same ``SystemModel.transfer`` prices the modelled latency
(``latency_<component>_s``, slowest model transfer per component and round) and radio
energy, and ``SystemModel.compute`` the compute energy of the FLOPs a handler reported:
these are the cost model's figures for the transfers that really happened, not
measurements. Transfers are priced at the deployment's topology (time 0, which is where
``Plan`` attaches every device) and each alone (no shared-link contention).

Measured next to them (wall clock): ``latency_measured_broadcast_<tier>_s`` (a request's
first to last chunk handed to the stream), ``latency_measured_collect_<tier>_s`` (the
round trip less the child's handler time: the tail of the request and the whole reply on
the network), ``latency_measured_compute_device_s`` (a device's handler) and
``latency_measured_aggregate_edge_s`` (an edge's handler less the time it waited for its
devices); each is the slowest of its round, summed over rounds like the modelled ones.
``wire_bytes_<dir>_<tier>`` and ``wire_overhead_bytes_<dir>_<tier>`` are the serialised
frames on each stream (protobuf envelope and the 5-byte gRPC message prefix; HTTP/2 and
TLS framing is below what the application sees) and their part beyond the message bytes.

A child reports what it and everything below it counted since its previous report on the
last chunk of each reply, and the parent adds it to its own figures (see ``NodeFigures``).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping

from fedge.core.message import Message
from fedge.core.transport import SYNC
from fedge.runtime.grpc import fedge_pb2 as pb
from fedge.runtime.simulated import Ledger
from fedge.system.model import SystemModel

MODELLED_PREFIXES = ("latency_", "transmission_latency_s", "energy_j", "airtime_s_")
"""Keys whose values come from the system model (``latency_measured_*`` excepted)."""
MEASURED_PREFIX = "latency_measured_"
_ENERGY = "energy_j@"
_WORK_COMPONENT = {"device": "compute", "edge": "aggregate"}
"""What a child's own handler time stands for: a device trains, an edge aggregates."""


class _Tally:
    """Figures charged over some span: the local engine's ``Ledger`` plus other sums and
    per-round maxima (``component@round``)."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.sums: defaultdict[str, float] = defaultdict(float)
        self.maxima: dict[str, float] = {}

    def add(self, sums: Mapping[str, float], maxima: Mapping[str, float]) -> None:
        for key, value in sums.items():
            self.sums[key] += value
        for key, value in maxima.items():
            self.maxima[key] = max(self.maxima.get(key, 0.0), value)

    def flat(self) -> tuple[dict[str, float], dict[str, float]]:
        """Everything as (sums, maxima): the ledger's counters and energy per tier too."""
        sums = dict(self.sums)
        for key, value in self.ledger.counters.items():
            sums[key] = sums.get(key, 0.0) + value
        for tier, joules in self.ledger.energy.by_tier().items():
            sums[_ENERGY + tier] = sums.get(_ENERGY + tier, 0.0) + joules
        maxima = dict(self.maxima)
        for (component, round_index), seconds in self.ledger.slowest_s.items():
            key = f"{component}@{round_index}"
            maxima[key] = max(maxima.get(key, 0.0), seconds)
        return sums, maxima


class NodeFigures:
    """The figures of one node and of what its children reported.

    Reports carry what changed since the node's previous report (sums since then, maxima
    that rose), and a parent adds them to its own: each figure reaches the cloud once,
    through whichever parent the node had when it sent it (a device that moved to another
    edge is not counted twice), and a report stays small however many rounds have passed.
    A reply that never arrives loses the figures it carried."""

    def __init__(self, node_id: str, tier: str, system: SystemModel | None) -> None:
        self.node_id = node_id
        self.tier = tier
        self.system = system
        self._total = _Tally()
        self._pending = _Tally()
        """What changed since the last report."""
        self._seq = 0
        self._lock = threading.Lock()

    # -- what this node charges -----------------------------------------------------------

    def sent(self, message: Message, nbytes: int, wire_bytes: int, link: str) -> None:
        """``message`` (``nbytes`` codec bytes) left this node as ``wire_bytes`` of frames on
        the stream ``link`` (``down_<child tier>`` from a hub, ``up_<tier>`` to a parent)."""
        sums = {
            f"wire_bytes_{link}": wire_bytes,
            f"wire_overhead_bytes_{link}": wire_bytes - nbytes,
        }
        cost = None
        if self.system is not None and SYNC not in (message.src, message.dst):
            # as on the local engine: the round barrier's triggers and metrics cost nothing
            cost = self.system.transfer(message.src, message.dst, nbytes, 0.0)
        with self._lock:
            for tally in (self._total, self._pending):
                if cost is not None and self.system is not None:
                    tally.ledger.charge_transfer(cost, self.system, message)
                tally.add(sums, {})

    def received_report(self, child_tier: str, wire_bytes: int) -> None:
        """A child's report arrived: its own bytes on the stream are overhead of ``up``."""
        sums = {f"wire_bytes_up_{child_tier}": wire_bytes}
        sums[f"wire_overhead_bytes_up_{child_tier}"] = wire_bytes
        self._add(sums, {})

    def computed(self, message: Message, flops: float) -> None:
        """This node's handler did ``flops`` of work for ``message`` (charged like the local
        engine: compute energy and the ``flops`` counter)."""
        if self.system is None:
            return
        cost = self.system.compute(self.node_id, flops, message.round)
        with self._lock:
            for tally in (self._total, self._pending):
                tally.ledger.energy.charge(self.node_id, self.tier, "compute", cost.energy_j)
                tally.ledger.counters["flops"] += flops

    def measured(self, component: str, round_index: int, seconds: float) -> None:
        """A wall-clock latency of ``component`` in round ``round_index`` (slowest kept)."""
        self._add({}, {f"{component}@{round_index}": seconds})

    def worked(self, message: Message, seconds: float) -> None:
        """This node's own handler time for ``message`` (without waiting for children)."""
        component = _WORK_COMPONENT.get(self.tier)
        if component is not None:
            self.measured(f"measured_{component}_{self.tier}", message.round, seconds)

    def _add(self, sums: Mapping[str, float], maxima: Mapping[str, float]) -> None:
        with self._lock:
            self._total.add(sums, maxima)
            self._pending.add(sums, maxima)

    # -- reports up the tree -------------------------------------------------------------

    def merge(self, report: pb.Report) -> None:
        """Add what a child reported (it is passed on with this node's next report)."""
        self._add(report.sums, report.maxima)

    def report(self, handler_s: float = 0.0) -> pb.Report:
        """What changed here and below since the previous report, for the parent."""
        with self._lock:
            sums, maxima = self._pending.flat()
            self._pending = _Tally()
            self._seq += 1
            seq = self._seq
        return pb.Report(
            node_id=self.node_id, seq=seq, sums=sums, maxima=maxima, handler_s=handler_s
        )

    def _totals(self) -> tuple[dict[str, float], dict[str, float]]:
        with self._lock:
            return self._total.flat()

    def snapshot(self) -> dict[str, float]:
        """The figures as a run's row: the local engine's keys (through its own ``Ledger``)
        plus the wire and measured ones."""
        sums, maxima = self._totals()
        ledger = Ledger()
        out: dict[str, float] = {}
        for key, value in sums.items():
            if key.startswith(_ENERGY):
                tier = key.removeprefix(_ENERGY)
                ledger.energy.charge(tier, tier, "compute", value)
            elif key.startswith("wire_"):
                out[key] = value
            else:
                ledger.counters[key] = value
        measured: dict[str, float] = {}
        for key, seconds in maxima.items():
            component, _, round_index = key.rpartition("@")
            if component.startswith("measured_"):
                name = f"latency_{component}_s"
                measured[name] = measured.get(name, 0.0) + seconds
            else:
                ledger.note_latency(component, int(round_index), seconds)
        out.update(ledger.snapshot() if self.system is not None else {})
        out.update(measured)
        out["wire_overhead_bytes"] = sum(
            v for k, v in out.items() if k.startswith("wire_overhead_bytes_")
        )
        return out


def modelled_keys(row: Mapping[str, float]) -> list[str]:
    """The keys of ``row`` that the system model computed (for summary.json's list)."""
    return sorted(
        k for k in row if k.startswith(MODELLED_PREFIXES) and not k.startswith(MEASURED_PREFIX)
    )

"""The Ray engine: device work and edge rounds run on a bounded pool of Ray actors.

The driver keeps every app and its state; the cloud, split learning and whatever cannot run
apart (below) run here exactly as on the local engine. A fixed pool of ``workers`` actors
(never one per client) each builds the node apps once from a picklable factory; a portable
delivery (``NodeApp.portable``, e.g. a device's ``train``) runs on the least-loaded actor.
Transports call ``prefetch`` with the messages they are about to deliver, so their portable
work runs in parallel; their sequential loop then takes each result in order, so the
simulated charging, and every number, is the same as on the local engine (given the same
torch thread count).

A batch's shared payload (the global model every chosen device receives) is put into the
object store once, in its wire encoding (``Message.encode``: much faster than pickling
tensors); replies come back encoded too.

Edges in parallel: a delivery of a kind its node marks ``offload`` (an edge's round over its
devices) runs on a worker together with every delivery it makes downstream, on a simulated
transport at that node whose clock starts when the request arrives (the driver's transport
says when, ``prefetch_nested``) and whose ledger only records its charges. The driver sends
the node states the subtree may read (every node delivered to so far) and, when it takes
the result in the original order, puts back the states of the nodes the subtree reached,
replays the recorded charges on its own ledger and moves the edge's clock to where the
worker's ended: the same float operations in the same order as on the local engine. A
result is used only if nothing it reached was delivered to since it was started (a vehicle
that moved into the next edge's round, a handover) and every node it reached keeps its run
state in its node state (``portable`` / ``offload`` kinds); otherwise the delivery runs
again in the driver, so the numbers never change, only the parallelism; a node and kind
whose subtree reached such a node stays in the driver from then on. Offloaded messages
travel as Python objects (not every payload has a wire encoding: cluster ids as keys).

Every node state lives in the driver between deliveries, so a checkpoint of this node set
holds the run; the pool is not stored and starts again on resume.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Literal

import torch

from fedge.core.errors import ConfigError, FedgeError
from fedge.core.message import Message
from fedge.core.node import LazyApps, NodeApp
from fedge.core.transport import Transport
from fedge.core.update import Work
from fedge.runtime.local import NodeSet
from fedge.runtime.simulated import Charge, RecordingLedger, SimulatedTransport, replay

AppsFactory = Callable[[], Mapping[str, NodeApp]]
"""Builds the node apps in a worker; pickled to every actor, so a module-level function or
a ``functools.partial`` of one."""
Wire = Literal["encoded", "pickle"]
WIRES: tuple[Wire, ...] = ("encoded", "pickle")
INSTALL_HINT = "pip install 'fedge[ray]'"


def import_ray() -> ModuleType:
    """The ray module, or a FedgeError with the install hint."""
    try:
        import ray
    except ImportError as exc:
        raise FedgeError(f"engine 'ray' needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


def start_local_ray(ray: ModuleType, num_cpus: int, attempts: int = 2) -> None:
    """Start a local Ray; its start gives up after a fixed 30 s when a loaded machine is slow
    to register the raylet, so try again once before reporting it."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
            return
        except Exception as exc:  # Ray raises a bare Exception for a start that timed out
            ray.shutdown()
            if attempt == attempts:
                raise FedgeError(
                    f"local Ray did not start ({exc}); try again or set ray.address"
                ) from exc
            time.sleep(2.0)


def _unwrap(form: Message | bytes) -> Message:
    return Message.decode(form) if isinstance(form, bytes) else form


def _wrap(message: Message, wire: Wire) -> Message | bytes:
    return message.encode() if wire == "encoded" else message


class _Subtree(NodeSet):
    """A worker's node set for offloaded deliveries: it records which nodes a subtree
    reached (with the kinds delivered) and sets node states as the driver sends them, every
    other node it ever reached back to its state as built."""

    def __init__(self, apps: Mapping[str, NodeApp], seed: int) -> None:
        super().__init__(apps, seed)
        self.reached: dict[str, set[str]] = {}
        self._built: dict[str, dict[str, Any]] = {}

    def restore(self, states: Mapping[str, dict[str, Any]]) -> None:
        for node in states:
            self._keep_built(node)
        for node, built in self._built.items():
            state = self.apps[node].state
            state.clear()
            state.update(states[node] if node in states else copy.deepcopy(built))
        self.reached = {}

    def _keep_built(self, node: str) -> None:
        if node not in self._built:
            self._built[node] = copy.deepcopy(self._app(node).state)

    def deliver(self, message: Message, downstream: Transport | None) -> tuple[Message, Work]:
        self._keep_built(message.dst)
        self.reached.setdefault(message.dst, set()).add(message.kind)
        return super().deliver(message, downstream)

    def clean(self, root: str) -> bool:
        """Whether every node reached below ``root`` keeps its run state in its state."""
        for node, kinds in self.reached.items():
            app = self.apps[node]
            if node != root and not kinds <= app.portable | app.offload:
                return False
        return True


@dataclass(frozen=True)
class _Nested:
    """What an offloaded delivery did: its reply and work, when its node's clock ended, the
    charges in order, and the states of the nodes it reached."""

    reply: Message | bytes
    work: Work
    end_s: float
    charges: list[Charge]
    states: dict[str, dict[str, Any]]
    clean: bool


class _Worker:
    """One pool actor: the node apps built once, answering portable and offloaded
    deliveries."""

    def __init__(self, factory: AppsFactory, seed: int, threads: int) -> None:
        torch.set_num_threads(threads)
        self._nodes = _Subtree(factory(), seed)

    def nested(
        self,
        dst: str,
        template: Message | bytes,
        start_s: float,
        system: Any,
        states: Mapping[str, dict[str, Any]],
    ) -> _Nested:
        """Deliver ``template`` to ``dst`` with its downstream deliveries, on a simulated
        transport at ``dst`` from ``start_s`` that records its charges."""
        message = replace(_unwrap(template), dst=dst)
        self._nodes.restore(states)
        ledger = RecordingLedger()
        child = SimulatedTransport(self._nodes, system, dst, start_s, ledger)
        reply, work = self._nodes.deliver(message, child)
        reached = {n: self._nodes.apps[n].state for n in self._nodes.reached}
        return _Nested(
            reply.encode() if isinstance(template, bytes) else reply,
            work,
            child.now(),
            ledger.log,
            reached,
            self._nodes.clean(dst),
        )

    def deliver(self, dst: str, template: Message | bytes) -> tuple[Message | bytes, Work]:
        """Deliver ``template`` addressed to ``dst``; the reply in the template's form."""
        message = replace(_unwrap(template), dst=dst)
        reply, work = self._nodes.respond(message)
        return (reply.encode() if isinstance(template, bytes) else reply), work

    def ready(self) -> bool:
        return True


class _Rebuild:
    """The apps factory, named (not stored) in checkpoints: it is rebuilt from the config."""

    checkpoint_by_reference = True

    def __init__(self, factory: AppsFactory) -> None:
        self.factory = factory

    def __call__(self) -> Mapping[str, NodeApp]:
        return self.factory()


class RayNodeSet(NodeSet):
    """A NodeSet whose portable deliveries run on a fixed pool of Ray actors."""

    def __init__(
        self,
        apps: Mapping[str, NodeApp],
        seed: int,
        factory: AppsFactory,
        *,
        workers: int = 0,
        address: str | None = None,
        threads: int = 1,
        wire: Wire = "encoded",
    ) -> None:
        super().__init__(apps, seed)
        if workers < 0:
            raise ConfigError("ray.workers", workers, "an integer >= 0 (0: one per Ray CPU)")
        if wire not in WIRES:
            raise ConfigError("wire", wire, " or ".join(WIRES))
        self._ray = import_ray()
        self._factory = _Rebuild(factory)
        self._workers, self._address = workers, address
        self._threads, self._wire = max(threads, 1), wire
        self._actors: list[Any] = []
        self._load: list[int] = []
        self._pending: dict[int, tuple[Message, Any, int]] = {}
        self._nested: dict[int, tuple[Message, Any, int, float, int]] = {}
        """id(message) -> (message: keeps the id unique, result ref, actor, arrival, seq)."""
        self._system: tuple[object, Any] | None = None
        self._started_ray = False
        self._seq = 0
        self._touched: dict[str, int] = {}
        """Node -> when (a count of deliveries) it was last delivered to in this driver."""
        self._stay: set[tuple[str, str]] = set()
        """(node, kind) whose subtree reached a node keeping state outside its node state."""
        self.remote_deliveries = 0
        """Deliveries answered by the pool (portable ones), for tests and diagnostics."""
        self.remote_subtrees = 0
        """Offloaded deliveries (edge rounds) whose pool result was used."""
        self.local_subtrees = 0
        """Offloaded deliveries run again in the driver (their subtree met another's)."""

    @property
    def pool_size(self) -> int:
        """Actors in the pool (0 until the first portable delivery starts it)."""
        return len(self._actors)

    def start(self) -> None:
        """Start the pool now and wait until every actor has built its apps (otherwise the
        first portable delivery starts it)."""
        self._ray.get([actor.ready.remote() for actor in self._pool()])

    def is_portable(self, message: Message) -> bool:
        app = self.apps.get(message.dst)
        return app is not None and message.kind in app.portable

    def prefetch(self, messages: Sequence[Message]) -> None:
        """Start every portable message's work on the pool; ``deliver`` collects it."""
        todo = [m for m in messages if id(m) not in self._pending and self.is_portable(m)]
        if todo:
            self._pool()  # connects first: ``ray.put`` would start a Ray we could not stop
        templates: dict[tuple[str, str, int, int], Any] = {}
        for m in todo:
            key = (m.src, m.kind, m.round, id(m.payload))
            if key not in templates:
                templates[key] = self._put(m)
            self._pending[id(m)] = (m, *self._submit(m.dst, templates[key]))

    def offloads(self, message: Message) -> bool:
        """An offload kind whose subtree has not been found to reach a node that keeps run
        state outside its node state (then it stays in the driver for the rest of the run)."""
        app = self.apps.get(message.dst)
        offload = app is not None and message.kind in app.offload
        return offload and (message.dst, message.kind) not in self._stay

    def prefetch_nested(
        self, messages: Sequence[Message], arrivals: Sequence[float], system: object
    ) -> None:
        """Start every offloadable message's subtree on the pool from the current node
        states; ``deliver`` takes the result or runs it again in the driver."""
        todo = [
            (m, t)
            for m, t in zip(messages, arrivals, strict=True)
            if id(m) not in self._nested and self.offloads(m)
        ]
        if not todo:
            return
        self._pool()
        if self._system is None or self._system[0] is not system:
            self._system = (system, self._ray.put(system))
        reached = set(self._touched) | {m.dst for m, _ in todo}
        states = self._ray.put({n: self.apps[n].state for n in sorted(reached) if n in self.apps})
        templates: dict[tuple[str, str, int, int], Any] = {}
        for m, arrive_s in todo:
            key = (m.src, m.kind, m.round, id(m.payload))
            if key not in templates:  # as is: not every payload has a wire encoding
                templates[key] = self._ray.put(replace(m, dst=""))
            actors = self._pool()
            i = min(range(len(actors)), key=self._load.__getitem__)
            self._load[i] += 1
            ref = actors[i].nested.remote(m.dst, templates[key], arrive_s, self._system[1], states)
            self._nested[id(m)] = (m, ref, i, arrive_s, self._seq)

    def deliver(self, message: Message, downstream: Transport | None) -> tuple[Message, Work]:
        try:
            if id(message) in self._nested:
                return self._deliver_nested(message, downstream)
            if not self.is_portable(message):
                return super().deliver(message, downstream)
            return self._deliver_portable(message)
        finally:
            self._touch(message.dst)

    def _touch(self, node: str) -> None:
        self._seq += 1
        self._touched[node] = self._seq

    def _deliver_nested(
        self, message: Message, downstream: Transport | None
    ) -> tuple[Message, Work]:
        """The pool's result of an offloaded delivery when it is still exact here (else the
        delivery runs in the driver): states back, charges replayed, the clock moved on."""
        _, ref, actor, arrive_s, seq = self._nested.pop(id(message))
        try:
            result: _Nested = self._get(ref, message)
        finally:
            if actor < len(self._load):
                self._load[actor] -= 1
        usable = (
            result.clean
            and isinstance(downstream, SimulatedTransport)
            and downstream.now() == arrive_s
            and all(self._touched.get(n, 0) <= seq for n in result.states)
        )
        if not result.clean:
            self._stay.add((message.dst, message.kind))
        if not usable or not isinstance(downstream, SimulatedTransport):
            self.local_subtrees += 1
            return super().deliver(message, downstream)
        for node, state in result.states.items():
            own = self.apps[node].state
            own.clear()
            own.update(state)
            self._touch(node)
        replay(downstream.ledger, result.charges)
        downstream.advance_to(result.end_s)
        self.remote_subtrees += 1
        return _unwrap(result.reply), result.work

    def _get(self, ref: Any, message: Message) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayActorError as exc:
            raise FedgeError(
                f"a Ray worker died delivering {message.kind!r} to {message.dst!r}: {exc}"
            ) from exc

    def _deliver_portable(self, message: Message) -> tuple[Message, Work]:
        entry = self._pending.pop(id(message), None)
        if entry is None:  # not prefetched (the pending entry keeps ``id`` unique)
            entry = (message, *self._submit(message.dst, self._put(message)))
        _, ref, actor = entry
        try:
            form, work = self._get(ref, message)
        finally:
            if actor < len(self._load):
                self._load[actor] -= 1
        self.remote_deliveries += 1
        app = self.apps[message.dst]
        return app.finish(message, _unwrap(form), app.context(self.seed, message, None)), work

    def close(self) -> None:
        """Kill the pool's actors; shut Ray down if this node set started it."""
        actors, self._actors, self._load = self._actors, [], []
        self._pending.clear()
        self._nested.clear()
        self._system = None
        for actor in actors:
            self._ray.kill(actor)
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False
        super().close()  # the spilled device state's file, as in-process

    def _put(self, message: Message) -> Any:
        """The message, minus its destination, in the object store in the wire form."""
        return self._ray.put(_wrap(replace(message, dst=""), self._wire))

    def _submit(self, dst: str, template: Any) -> tuple[Any, int]:
        actors = self._pool()
        i = min(range(len(actors)), key=self._load.__getitem__)
        self._load[i] += 1
        return actors[i].deliver.remote(dst, template), i

    def _pool(self) -> list[Any]:
        if not self._actors:
            self._connect()
            cpus = float(self._ray.cluster_resources().get("CPU", 1.0))
            size = self._size_for(int(cpus))
            worker = self._ray.remote(num_cpus=min(1.0, cpus / size))(_Worker)
            factory = self._ray.put(self._factory)  # once: every actor maps the same object
            self._actors = [worker.remote(factory, self.seed, self._threads) for _ in range(size)]
            self._load = [0] * size
        return self._actors

    def _size_for(self, cpus: int) -> int:
        """``workers`` (or one per CPU), never more than the nodes with portable work."""
        if isinstance(self.apps, LazyApps):  # a large population: do not make every app
            return max(1, min(self._workers or cpus, len(self.apps)))
        portable = sum(1 for app in self.apps.values() if app.portable or app.offload)
        return max(1, min(self._workers or cpus, portable))

    _LIVE = ("_ray", "_actors", "_load", "_pending", "_nested", "_system", "_started_ray")
    """What belongs to this process's Ray session: not in a checkpoint."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._LIVE}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ray = import_ray()
        self._actors, self._load = [], []
        self._pending, self._nested = {}, {}
        self._system = None
        self._started_ray = False

    def _connect(self) -> None:
        if self._ray.is_initialized():
            return
        if self._address:
            self._ray.init(address=self._address, logging_level=logging.WARNING)
        else:
            start_local_ray(self._ray, self._workers or os.cpu_count() or 1)
        self._started_ray = True

"""The Ray engine: portable device work runs on a bounded pool of Ray actors.

The driver keeps every app: edges, the cloud, peer and split devices run here exactly as
on the local engine. A fixed pool of ``workers`` actors (never one per client) each builds
the node apps once from a picklable factory; a portable delivery (``NodeApp.portable``, e.g.
a device's ``train``) runs on the least-loaded actor. Transports call ``prefetch`` with the
messages they are about to deliver, so their portable work runs in parallel; their
sequential loop then takes each result in order, so the simulated charging, and every
number, is the same as on the local engine (given the same torch thread count).

A batch's shared payload (the global model every chosen device receives) is put into the
object store once, in its wire encoding (``Message.encode``: much faster than pickling
tensors); replies come back encoded too.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from types import ModuleType
from typing import Any, Literal

import torch

from fedge.core.errors import ConfigError, FedgeError
from fedge.core.message import Message
from fedge.core.node import LazyApps, NodeApp
from fedge.core.transport import Transport
from fedge.core.update import Work
from fedge.runtime.local import NodeSet

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


class _Worker:
    """One pool actor: the node apps built once, answering portable deliveries."""

    def __init__(self, factory: AppsFactory, seed: int, threads: int) -> None:
        torch.set_num_threads(threads)
        self._nodes = NodeSet(factory(), seed)

    def deliver(self, dst: str, template: Message | bytes) -> tuple[Message | bytes, Work]:
        """Deliver ``template`` addressed to ``dst``; the reply in the template's form."""
        message = replace(_unwrap(template), dst=dst)
        reply, work = self._nodes.respond(message)
        return (reply.encode() if isinstance(template, bytes) else reply), work

    def ready(self) -> bool:
        return True


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
        self._factory = factory
        self._workers, self._address = workers, address
        self._threads, self._wire = max(threads, 1), wire
        self._actors: list[Any] = []
        self._load: list[int] = []
        self._pending: dict[int, tuple[Message, Any, int]] = {}
        self._started_ray = False
        self.remote_deliveries = 0
        """Deliveries answered by the pool (portable ones), for tests and diagnostics."""

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

    def deliver(self, message: Message, downstream: Transport | None) -> tuple[Message, Work]:
        if not self.is_portable(message):
            return super().deliver(message, downstream)
        entry = self._pending.pop(id(message), None)
        if entry is None:  # not prefetched (the pending entry keeps ``id`` unique)
            entry = (message, *self._submit(message.dst, self._put(message)))
        _, ref, actor = entry
        try:
            form, work = self._ray.get(ref)
        except self._ray.exceptions.RayActorError as exc:
            raise FedgeError(
                f"a Ray worker died delivering {message.kind!r} to {message.dst!r}: {exc}"
            ) from exc
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
        for actor in actors:
            self._ray.kill(actor)
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False

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
        portable = sum(1 for app in self.apps.values() if app.portable)
        return max(1, min(self._workers or cpus, portable))

    def _connect(self) -> None:
        if self._ray.is_initialized():
            return
        if self._address:
            self._ray.init(address=self._address, logging_level=logging.WARNING)
        else:
            start_local_ray(self._ray, self._workers or os.cpu_count() or 1)
        self._started_ray = True

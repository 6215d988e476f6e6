"""One OS process of a gRPC deployment: a hub for its children, attachments to its parents.

A process hosts one node with children (the cloud, an edge) or several leaf nodes (devices
packed into one process to save memory: each still has its own stream and certificate).
Every hosted node also answers ``shutdown``: it forwards it to its own children, then
the process stops. An edge checkpoints its node state after every request it answered
(written atomically) and reloads it when it starts again.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from fedge.core.errors import FedgeError
from fedge.core.files import atomic_write_bytes
from fedge.core.message import Message
from fedge.core.node import NodeApp, NodeContext
from fedge.core.transport import Transport
from fedge.core.update import ModelState, Update
from fedge.runtime.grpc.attach import Attachment, ParentRefused
from fedge.runtime.grpc.figures import NodeFigures
from fedge.runtime.grpc.guard import ModelCheck, RunIdentity
from fedge.runtime.grpc.hub import Authorize, Hub
from fedge.runtime.grpc.settings import GrpcSettings, LoopThread, pause
from fedge.runtime.grpc.tls import NodeCerts
from fedge.runtime.grpc.transport import GrpcTransport
from fedge.transforms.pipeline import reference_model

log = logging.getLogger("fedge.grpc")
SHUTDOWN = "shutdown"


class NodeProcess:
    """The event loop, executor, hub and attachments of one deployment process."""

    def __init__(self, settings: GrpcSettings, certs_dir: str | None, seed: int) -> None:
        self.settings = settings
        self.seed = seed
        self._certs_dir = certs_dir
        self._loop = LoopThread("fedge-grpc")
        # One thread: the nodes of a process share their scratch model, and a request that
        # arrives while a stale one still runs (a parent that restarted) waits its turn.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedge-node")
        self._stop = self._loop.submit(_event()).result()
        self._stopped = threading.Event()
        self.failure: BaseException | None = None
        """Why an attachment stopped for good (ParentRefused), if one did."""
        self.hub: Hub | None = None
        self.attachments: list[Attachment] = []
        self._running: list[Future[None]] = []
        self._executors = [self._executor]
        self.run_id = RunIdentity()
        """The run this process serves: set at the cloud, learned by the others."""
        self.check: ModelCheck | None = None
        self.hubs: list[Hub] = []
        """Further hubs of the process's nodes (a device that peers dial directly)."""
        self.ports: dict[str, int] = {}
        """The port each further hub listens on, by node."""

    @property
    def loop(self) -> LoopThread:
        return self._loop

    def listen(self, node_id: str, address: str, authorize: Authorize) -> Hub:
        """A further hub, as ``node_id``, for children that dial that node (its peers)."""
        hub = Hub(
            node_id, self.settings, authorize, self.certs(node_id), self._loop, run=self.run_id
        )
        hub.check = self.check
        self.ports[node_id] = hub.start(address)
        self.hubs.append(hub)
        log.info("%s: listening on %s", node_id, address)
        return hub

    def certs(self, node_id: str) -> NodeCerts | None:
        return NodeCerts.load(self._certs_dir, node_id) if self._certs_dir else None

    def serve(
        self,
        node_id: str,
        listen: str,
        authorize: Authorize,
        order: Sequence[str] = (),
        figures: NodeFigures | None = None,
    ) -> GrpcTransport:
        """Listen for children of ``node_id``; the transport reaches them (in ``order``);
        ``figures``: where the node counts what it sends and its children report."""
        self.hub = Hub(
            node_id, self.settings, authorize, self.certs(node_id), self._loop, run=self.run_id
        )
        self.hub.check = self.check
        self.hub.figures = figures
        self.port = self.hub.start(listen)
        log.info("%s: listening on port %d", node_id, self.port)
        return GrpcTransport(self.hub, node_id, order)

    def attach(
        self,
        app: NodeApp,
        parents: Sequence[str],
        downstream: Transport | None = None,
        executor: Executor | None = None,
        names: Mapping[str, str] | None = None,
        figures: NodeFigures | None = None,
        reports: bool = True,
    ) -> Attachment:
        """Dial the first reachable parent as ``app``'s node and answer its requests (on the
        process's thread unless ``executor`` is given); ``names`` maps a parent address to
        the node id its certificate must name; the node's ``figures`` are charged and, with
        ``reports``, sent up with every reply."""
        app.on(SHUTDOWN, self._shutdown)
        attachment = Attachment(
            app,
            self.seed,
            parents,
            self.settings,
            self.certs(app.node_id),
            executor or self._executor,
            downstream,
            run=self.run_id,
            names=names,
        )
        attachment.check = self.check
        attachment.figures, attachment.reports = figures, reports
        self.attachments.append(attachment)
        running = self._loop.submit(attachment.run(self._stop))
        running.add_done_callback(self._ended)
        self._running.append(running)
        return attachment

    def check_models(self, template: ModelState) -> None:
        """Refuse requests and replies whose models do not fit ``template`` (see ``guard``);
        call before ``serve`` and ``attach``."""
        self.check = ModelCheck(template)

    def _ended(self, running: Future[None]) -> None:
        """An attachment refused for good stops the process (``wait`` raises it)."""
        if not running.cancelled() and isinstance(running.exception(), ParentRefused):
            self.failure = running.exception()
            self._stopped.set()

    def own_thread(self) -> Executor:
        """A further single thread for requests that must not wait behind the others."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedge-peer")
        self._executors.append(executor)
        return executor

    def keep_training(self, attachment: Attachment) -> Dormancy:
        """Let an edge train on its own while its parent is unreachable."""
        dormancy = Dormancy(attachment, self.settings.dormant_after_s)
        if self.settings.dormant_after_s > 0:
            self._loop.submit(dormancy.watch(self._stop, self._executor))
        return dormancy

    def _shutdown(self, message: Message, ctx: NodeContext) -> Message:
        if ctx.downstream is not None and ctx.tier != "device":  # a device's are its peers
            shutdown_children(ctx.downstream)
        self._loop.loop.call_later(0.5, self._stop.set)
        self._loop.loop.call_later(0.5, self._stopped.set)
        return message.reply("bye")

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until a ``shutdown`` arrived (True) or ``timeout_s`` passed (False); raises
        ``ParentRefused`` when a child of this process was refused for good."""
        stopped = self._stopped.wait(timeout_s)
        if self.failure is not None:
            raise self.failure
        return stopped

    def close(self) -> None:
        """Close every stream (children see them end at once), then stop the loop."""
        self._loop.loop.call_soon_threadsafe(self._stop.set)
        wait(self._running, timeout=5.0)
        if self.hub is not None:
            self.hub.stop()
        for hub in self.hubs:
            hub.stop()
        for executor in self._executors:
            executor.shutdown(wait=False, cancel_futures=True)
        self._loop.stop()


async def _event() -> asyncio.Event:
    return asyncio.Event()


def shutdown_children(transport: Transport) -> None:
    """Ask every child of this node to stop (edges pass it on to their devices)."""
    children = [n for tier in ("edge", "device") for n in transport.nodes(tier)]
    transport.send([Message(transport.node_id, c, SHUTDOWN) for c in children], 10.0)


class EdgeState:
    """An edge's node state on disk: written atomically after every answered request."""

    def __init__(self, directory: str | Path, app: NodeApp) -> None:
        self.path = Path(directory) / f"{app.node_id}.state.pkl"
        self.app = app

    def restore(self) -> bool:
        if not self.path.exists():
            return False
        try:
            saved: dict[str, Any] = pickle.loads(self.path.read_bytes())
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
            raise FedgeError(f"edge checkpoint {self.path} cannot be read: {exc}") from exc
        self.app.state.clear()
        self.app.state.update(saved)
        log.info("%s: restored its state from %s", self.app.node_id, self.path)
        return True

    def save(self, request: Message, reply: Message) -> None:
        data = pickle.dumps(dict(self.app.state), protocol=pickle.HIGHEST_PROTOCOL)
        atomic_write_bytes(self.path, data)


class Dormancy:
    """An edge cut off from its parent keeps training its own model, then resynchronises.

    While the stream to the parent is down, every ``period_s`` the edge repeats its last
    request without a model (so it continues from its own). The first request from the
    parent after that also trains from the edge's own model, so the work done alone reaches
    the global model in that round's aggregation; from then on the edge follows the parent.
    """

    def __init__(self, attachment: Attachment, period_s: float) -> None:
        self.attachment = attachment
        self.period_s = period_s
        self.rounds_alone = 0
        self._last: Message | None = None
        attachment.before = self.before
        attachment.after.append(self.after)

    def after(self, request: Message, reply: Message) -> None:
        if "edge_rounds" in request.payload and not request.payload.get("alone"):
            self._last = request

    def before(self, request: Message) -> Message:
        if not self.rounds_alone or reference_model(request) is None:
            return request
        log.info(
            "%s: back in touch after %d rounds alone; resynchronising",
            request.dst,
            self.rounds_alone,
        )
        self.rounds_alone = 0
        return Message(request.src, request.dst, request.kind, request.round, _no_model(request))

    async def watch(self, stop: asyncio.Event, executor: Executor) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            await pause(stop, self.period_s)
            down_s = time.monotonic() - self.attachment.disconnected_since_s
            alone = self.attachment.connected_to is None and down_s >= self.period_s
            if alone and self._last is not None and not stop.is_set():
                await loop.run_in_executor(executor, self.round_alone, self._last)

    def round_alone(self, last: Message) -> None:
        """One round without the parent, from the edge's own model."""
        self.rounds_alone += 1
        rounds = int(last.payload["edge_rounds"])
        payload = _no_model(last)
        payload["first_round"] = int(last.payload["first_round"]) + self.rounds_alone * rounds
        payload["alone"] = True
        log.info("%s: parent unreachable, round %d alone", last.dst, self.rounds_alone)
        self.attachment.handle(Message(last.src, last.dst, last.kind, last.round, payload))


def _no_model(message: Message) -> dict[str, Any]:
    """The payload without the models it carries (the edge goes on from its own)."""
    return {
        k: v
        for k, v in message.payload.items()
        if not (isinstance(v, Update) and v.kind == "state")
    }

"""The child side of a gRPC node: dial the parent, hold the stream, answer its requests.

A child knows a list of parents, its home first. It reconnects after a broken stream with
exponential backoff (``retry_initial_s`` doubling up to ``retry_max_s``, with jitter). Once
it has been attached, a parent it cannot reach for ``failover_s`` is given up for the next
of the list (a device whose edge died re-attaches to a neighbour edge), where it stays; before
its first attachment it waits up to ``connect_timeout_s`` for its home (processes start at
different speeds). A parent that refuses the child for a permanent reason (its certificate
names another node, the parent does not know it, another protocol) is dropped from the list
without retries; when none is left the child stops with ``ParentRefused``. Requests run on an
executor thread, so a long handler (an edge coordinating its devices) never blocks the
stream. A request that fails is answered with an ERROR frame and logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import grpc
from grpc import aio

from fedge.core.errors import FedgeError
from fedge.core.message import Message
from fedge.core.node import NodeApp
from fedge.core.transport import Transport
from fedge.runtime.grpc import wire
from fedge.runtime.grpc.figures import NodeFigures
from fedge.runtime.grpc.settings import GrpcSettings, pause
from fedge.runtime.grpc.tls import NodeCerts

log = logging.getLogger("fedge.grpc")
PERMANENT = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
)
"""Refusals that trying again cannot cure (identity mismatch, unknown node, protocol)."""


class ParentRefused(FedgeError):
    """Every parent of a child refused it for a permanent reason: it stops, not retries."""


Rewrite = Callable[[Message], Message]
Observe = Callable[[Message, Message], None]


class Attachment:
    """One child node attached to a parent; ``run`` until ``stop`` is set."""

    def __init__(
        self,
        app: NodeApp,
        seed: int,
        parents: Sequence[str],
        settings: GrpcSettings,
        certs: NodeCerts | None,
        executor: Executor,
        downstream: Transport | None = None,
    ) -> None:
        if not parents:
            raise ValueError(f"{app.node_id} has no parent address to attach to")
        self.app = app
        self.parents = list(parents)
        self.settings = settings
        self.connected_to: str | None = None
        self.disconnected_since_s = time.monotonic()
        self.before: Rewrite | None = None
        """Applied to every request before its handler (e.g. an edge back from dormancy)."""
        self.after: list[Observe] = []
        """Called with every (request, reply) pair the node answered."""
        self.figures: NodeFigures | None = None
        """The node's figures: its replies and compute are charged there."""
        self.reports = True
        """Send the figures up with every reply (False on a neighbour edge's stream, so the
        cloud hears each node's figures once, from its parent)."""
        self._seed = seed
        self._certs = certs
        self._executor = executor
        self._downstream = downstream
        self._rng = random.Random(f"{app.node_id}-backoff")

    async def run(self, stop: asyncio.Event) -> None:
        index, delay_s = 0, self.settings.retry_initial_s
        patience_s = self.settings.connect_timeout_s
        failing_since_s = time.monotonic()
        while not stop.is_set():
            address = self.parents[index]
            try:
                established = await self._session(address, stop)
            except ParentRefused as exc:  # this parent never will: drop it, else stop
                del self.parents[index]
                if not self.parents:
                    raise
                log.error("%s", exc)
                index %= len(self.parents)
                continue
            if established:
                delay_s, patience_s = self.settings.retry_initial_s, self.settings.failover_s
                failing_since_s = time.monotonic()
                continue
            if time.monotonic() - failing_since_s >= patience_s and len(self.parents) > 1:
                index = (index + 1) % len(self.parents)
                failing_since_s = time.monotonic()
                log.warning("%s: moving to parent %s", self.app.node_id, self.parents[index])
            pause_s = delay_s * (0.5 + self._rng.random())
            delay_s = min(2 * delay_s, self.settings.retry_max_s)
            await pause(stop, pause_s)

    def _channel(self, address: str) -> aio.Channel:
        options = self.settings.options()
        if self._certs is None:
            return aio.insecure_channel(address, options=options)
        return aio.secure_channel(address, self._certs.channel(), options=options)

    async def _session(self, address: str, stop: asyncio.Event) -> bool:
        """One stream to ``address``; True when it was established (then broke or ended)."""
        outgoing: asyncio.Queue[wire.Frame | wire.Outgoing | None] = asyncio.Queue()
        outgoing.put_nowait(wire.hello(self.app.node_id, self.app.tier, self.parents[0]))

        async def frames() -> Any:
            while (frame := await outgoing.get()) is not None:
                if isinstance(frame, wire.Outgoing):
                    for piece in frame.frames():
                        yield piece  # one chunk at a time
                else:
                    yield frame

        channel = self._channel(address)
        established = False
        try:
            stream = channel.stream_stream(
                wire.SERVICE_METHOD,
                request_serializer=wire.serialize,
                response_deserializer=wire.parse,
            )(frames())
            await asyncio.wait_for(stream.wait_for_connection(), self.settings.connect_timeout_s)
            established = True
            self.connected_to = address
            log.info("%s: attached to %s", self.app.node_id, address)
            await self._serve(stream, outgoing, stop)
        except (aio.AioRpcError, TimeoutError) as exc:
            detail = exc.details() if isinstance(exc, aio.AioRpcError) else "timed out"
            if isinstance(exc, aio.AioRpcError) and exc.code() in PERMANENT:
                raise ParentRefused(
                    f"{self.app.node_id}: parent {address} refused it ({exc.code().name}: "
                    f"{detail}); not reconnecting: check the node id, its certificate and the "
                    "config every node shares"
                ) from None
            log.info("%s: stream to %s ended: %s", self.app.node_id, address, detail)
        finally:
            if self.connected_to is not None:
                self.disconnected_since_s = time.monotonic()
            self.connected_to = None
            outgoing.put_nowait(None)
            await channel.close(grace=None)
        return established

    async def _serve(
        self,
        stream: Any,
        outgoing: asyncio.Queue[wire.Frame | wire.Outgoing | None],
        stop: asyncio.Event,
    ) -> None:
        reassembler = wire.Reassembler(self.settings.max_message_bytes)
        tasks: set[asyncio.Task[None]] = set()
        stopping = asyncio.ensure_future(stop.wait())
        replies = aiter(stream)
        reading = asyncio.ensure_future(anext(replies, None))
        while True:
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                reading.cancel()
                stream.cancel()
                return
            frame = reading.result()
            if frame is None:
                stopping.cancel()
                return
            request = self._take(reassembler, frame, outgoing)
            if request is not None:
                task = asyncio.ensure_future(self._answer(request, frame.call_id, outgoing))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            reading = asyncio.ensure_future(anext(replies, None))

    def _take(
        self,
        reassembler: wire.Reassembler,
        frame: wire.Frame,
        outgoing: asyncio.Queue[wire.Frame | wire.Outgoing | None],
    ) -> Message | None:
        if frame.kind == wire.Frame.ERROR:
            reason = frame.data.decode(errors="replace")
            log.warning(
                "%s: the parent refused call %d: %s", self.app.node_id, frame.call_id, reason
            )
            return None
        try:
            return reassembler.add(frame)
        except wire.WireError as exc:
            log.warning("%s: rejected a request: %s", self.app.node_id, exc)
            outgoing.put_nowait(wire.error(frame.call_id, str(exc)))
            return None

    async def _answer(
        self,
        request: Message,
        call_id: int,
        outgoing: asyncio.Queue[wire.Frame | wire.Outgoing | None],
    ) -> None:
        loop = asyncio.get_running_loop()
        answer: wire.Frame | wire.Outgoing
        try:
            started_s = time.monotonic()
            reply = await loop.run_in_executor(self._executor, self.handle, request)
            answer = self._outgoing(call_id, reply, time.monotonic() - started_s)
        except Exception as exc:  # the handler's failure goes back to the caller, logged
            log.exception("%s: %s request failed", self.app.node_id, request.kind)
            answer = wire.error(call_id, f"{type(exc).__name__}: {exc}")
        outgoing.put_nowait(answer)

    def _outgoing(self, call_id: int, reply: Message, handler_s: float) -> wire.Outgoing:
        """The reply as frames; charged to the node's figures, which ride on its last chunk."""
        out = wire.Outgoing(call_id, reply.encode_parts(), self.settings.chunk_bytes)
        if self.figures is not None:
            self.figures.sent(reply, out.nbytes, out.wire_bytes, f"up_{self.app.tier}")
            if self.reports:
                out.report = self.figures.report(handler_s)
        return out

    def handle(self, request: Message) -> Message:
        """Run the node's handler for one request (on an executor thread)."""
        if request.dst != self.app.node_id:
            raise ValueError(f"a request for {request.dst!r} reached {self.app.node_id!r}")
        if self.before is not None:
            request = self.before(request)
        started_s = time.monotonic()
        waited_s = getattr(self._downstream, "waited_s", 0.0)
        ctx = self.app.context(self._seed, request, self._downstream)
        reply = self.app.handle(request, ctx)
        if self.figures is not None:
            waited_s = getattr(self._downstream, "waited_s", 0.0) - waited_s
            self.figures.computed(request, ctx.work.flops)
            self.figures.worked(request, time.monotonic() - started_s - waited_s)
        for observe in self.after:
            observe(request, reply)
        return reply

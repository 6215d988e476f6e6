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
stream. A request that fails is answered with an ERROR frame and logged; so is one that
breaks the protocol, belongs to another run, repeats a call id already taken on this stream
(a replay), or carries a model that does not fit this node's model (see ``guard``): such a
request is refused before any handler sees it.

A child also starts calls of its own over the same stream (``request``: PEER_REQUEST frames
up, the reply as PEER_REPLY frames down), to any node its parent can route to; a call waits
up to ``connect_timeout_s`` for the stream and ``call_timeout_s`` for its reply, and fails
at once with the parent's reason when the parent refuses it. A request from the parent for
another node than this one goes to ``forward`` (an edge relaying to its devices) when set.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
from fedge.runtime.grpc.guard import ModelCheck, ReplayGuard, RunIdentity
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
Forward = Callable[[Message], Awaitable[Message]]


class CallFailed(FedgeError):
    """A call this child started was refused or failed on its way (the reason says where)."""


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
        run: RunIdentity | None = None,
        names: Mapping[str, str] | None = None,
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
        self.forward: Forward | None = None
        """Answers the parent's requests for other nodes (a relay); None refuses them."""
        self.executor_for: Callable[[Message], Executor | None] | None = None
        """The executor of a request when not the node's own (None: the node's own)."""
        self._outgoing: asyncio.Queue[wire.Frame | wire.Outgoing | None] | None = None
        self._connected: asyncio.Event | None = None
        self._calls: dict[int, asyncio.Future[Message]] = {}
        self._callees: dict[int, str] = {}
        self._call_ids = itertools.count(1)
        self.run_id = run if run is not None else RunIdentity()
        """The run this node serves, learned from its first request (shared in a process)."""
        self.check: ModelCheck | None = None
        """Checks the models of every request against this node's model (None: no check)."""
        self._names = dict(names or {})
        """Parent address -> the node id its certificate must name (dialling a proxy or a
        NAT address, the host name alone would not say who answered)."""

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
        options: list[tuple[str, int | str]] = [*self.settings.options()]
        if address in self._names:
            options.append(("grpc.ssl_target_name_override", self._names[address]))
        if self._certs is None:
            return aio.insecure_channel(address, options=options)
        return aio.secure_channel(address, self._certs.channel(), options=options)

    async def _session(self, address: str, stop: asyncio.Event) -> bool:
        """One stream to ``address``; True when it was established (then broke or ended)."""
        outgoing: asyncio.Queue[wire.Frame | wire.Outgoing | None] = asyncio.Queue()
        outgoing.put_nowait(
            wire.hello(self.app.node_id, self.app.tier, self.parents[0], self.run_id.value)
        )

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
            self._outgoing = outgoing
            self._up().set()
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
            self._outgoing = None
            self._up().clear()
            self._fail_calls(f"the stream to {address} ended")
            outgoing.put_nowait(None)
            await channel.close(grace=None)
        return established

    # -- the calls this child starts ----------------------------------------------------

    def _up(self) -> asyncio.Event:
        if self._connected is None:
            self._connected = asyncio.Event()
        return self._connected

    async def request(self, message: Message) -> Message:
        """Send ``message`` (for any node the parent routes to) and wait for its reply; on
        the loop. Raises ``CallFailed`` when it is refused, times out or the stream breaks."""
        try:
            await asyncio.wait_for(self._up().wait(), self.settings.connect_timeout_s)
        except TimeoutError:
            raise CallFailed(f"{self.app.node_id}: not attached to a parent") from None
        outgoing = self._outgoing
        if outgoing is None:  # the stream broke since
            raise CallFailed(f"{self.app.node_id}: the stream to its parent just ended")
        call_id = next(self._call_ids)
        reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._calls[call_id], self._callees[call_id] = reply, message.dst
        outgoing.put_nowait(
            wire.Outgoing(
                call_id,
                message.encode_parts(),
                self.settings.chunk_bytes,
                run=self.run_id.value,
                kind=wire.Frame.PEER_REQUEST,
            )
        )
        try:
            return await asyncio.wait_for(reply, self.settings.call_timeout_s)
        except TimeoutError:
            raise CallFailed(
                f"{self.app.node_id} -> {message.dst}: no reply within grpc.call_timeout_s"
            ) from None
        finally:
            self._calls.pop(call_id, None)
            self._callees.pop(call_id, None)

    def _fail_calls(self, reason: str) -> None:
        for reply in self._calls.values():
            if not reply.done():
                reply.set_exception(CallFailed(f"{self.app.node_id}: {reason}"))

    def _take_reply(self, replies: wire.Reassembler, frame: wire.Frame) -> None:
        """A frame of the answer to one of this child's calls."""
        reply = self._calls.get(frame.call_id)
        if frame.kind == wire.Frame.PEER_ERROR:
            replies.forget(frame.call_id)
            if reply is not None and not reply.done():
                reason = frame.data.decode(errors="replace")
                reply.set_exception(CallFailed(f"{self.app.node_id}: refused: {reason}"))
            return
        try:
            message = replies.add(frame)
        except wire.WireError as exc:
            message = None
            if reply is not None and not reply.done():
                reply.set_exception(CallFailed(f"{self.app.node_id}: bad reply: {exc}"))
        if message is None or reply is None or reply.done():
            return
        if message.src != self._callees.get(frame.call_id):
            reply.set_exception(CallFailed(f"a reply came from {message.src!r}"))
        else:
            reply.set_result(message)

    # -- the parent's requests ------------------------------------------------------------

    async def _serve(
        self,
        stream: Any,
        outgoing: asyncio.Queue[wire.Frame | wire.Outgoing | None],
        stop: asyncio.Event,
    ) -> None:
        reassembler = wire.Reassembler(self.settings.max_message_bytes)
        answers = wire.Reassembler(self.settings.max_message_bytes)
        guard = ReplayGuard()
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
            if frame.kind in (wire.Frame.PEER_REPLY, wire.Frame.PEER_ERROR):
                self._take_reply(answers, frame)
                request = None
            else:
                request = self._take(reassembler, guard, frame, outgoing)
            if request is not None:
                task = asyncio.ensure_future(self._answer(request, frame.call_id, outgoing))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            reading = asyncio.ensure_future(anext(replies, None))

    def _take(
        self,
        reassembler: wire.Reassembler,
        guard: ReplayGuard,
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
            request = self._checked(reassembler, guard, frame)
        except Exception as exc:  # WireError, or anything a hostile message could provoke
            reassembler.forget(frame.call_id)
            log.warning("%s: rejected a request: %s", self.app.node_id, exc)
            outgoing.put_nowait(wire.error(frame.call_id, str(exc)))
            return None
        if request is not None:
            self.run_id.learn(frame.run)
        return request

    def _checked(
        self, reassembler: wire.Reassembler, guard: ReplayGuard, frame: wire.Frame
    ) -> Message | None:
        """The request ``frame`` completes, if any; raises WireError for one to refuse."""
        reason = self.run_id.refusal(frame.run)
        if reason is None and frame.seq == 0:
            reason = guard.refusal(frame.call_id)
        request = reassembler.add(frame) if reason is None else None
        if request is not None and self.check is not None:
            reason = self.check.refusal(request)
        if reason is not None:
            raise wire.WireError(f"call {frame.call_id}: {reason}")
        return request

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
            if request.dst != self.app.node_id and self.forward is not None:
                reply = await self.forward(request)
            else:
                chosen = self.executor_for(request) if self.executor_for is not None else None
                reply = await loop.run_in_executor(chosen or self._executor, self.handle, request)
            answer = self._reply_frames(call_id, reply, time.monotonic() - started_s)
        except Exception as exc:  # the handler's failure goes back to the caller, logged
            log.exception("%s: %s request failed", self.app.node_id, request.kind)
            answer = wire.error(call_id, f"{type(exc).__name__}: {exc}")
        outgoing.put_nowait(answer)

    def _reply_frames(self, call_id: int, reply: Message, handler_s: float) -> wire.Outgoing:
        """The reply as frames; charged to the node's figures, which ride on its last chunk."""
        chunk = self.settings.chunk_bytes
        out = wire.Outgoing(call_id, reply.encode_parts(), chunk, run=self.run_id.value)
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

"""The parent side of a gRPC node: children attach to it and answer its calls.

A device or edge dials its parent and holds one ``Attach`` stream; the hub sends requests
down that stream and matches the replies by call id. A child that says it is someone else
than its certificate names, an unknown node, an out-of-order, oversized or undecodable
message: each is rejected and logged, and the server carries on. So is a HELLO or reply of
another run, a reply to a call that is not outstanding (answered already, or never asked:
refused at its first chunk, nothing buffered) and a reply whose models do not fit this
node's model (``guard``; the call fails and its reply is absent). A call whose child drops
waits up to ``reattach_s`` for the same node to attach again (a restarted edge, a device
that reconnected) and is then sent again; otherwise it fails and its reply is absent.

Children may start calls too (PEER_REQUEST frames, numbered by the child): the hub hands
each such message to its ``route`` (the node answers it, or passes it down to a child or up
to its own parent, see ``fedge.runtime.grpc.route``) and sends the reply back as PEER_REPLY,
or the reason it failed as PEER_ERROR. A hub without a ``route`` refuses them. A call to a
node that is not a child goes down the stream of ``next_hop(dst)`` (a device behind its edge);
its reply must then come from that node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio

from fedge.core.errors import FedgeError
from fedge.core.message import Message
from fedge.runtime.grpc import wire
from fedge.runtime.grpc.figures import NodeFigures
from fedge.runtime.grpc.guard import ModelCheck, RunIdentity
from fedge.runtime.grpc.settings import GrpcSettings, LoopThread
from fedge.runtime.grpc.tls import NodeCerts

log = logging.getLogger("fedge.grpc")

REFUSED_MEMORY = 64
Authorize = Callable[[str, str], str | None]
"""(node id, tier) -> None to accept the child, or the reason it is refused."""
Route = Callable[[Message, str], Awaitable[Message]]
"""(a message a child sent, that child's id) -> the reply (answered here or passed on)."""


class ChildGone(FedgeError):
    """The child a call was sent to detached and did not come back in time."""


@dataclass(eq=False)
class _Child:
    node_id: str
    tier: str
    reassembler: wire.Reassembler
    queue: asyncio.Queue[wire.Frame | wire.Outgoing | None] = field(default_factory=asyncio.Queue)
    pending: dict[int, asyncio.Future[Message]] = field(default_factory=dict)
    relayed: dict[int, str] = field(default_factory=dict)
    """Calls sent through this child to another node: call id -> the node that answers."""
    calls: wire.Reassembler | None = None
    """The messages of the calls the child starts (PEER_REQUEST frames)."""
    refused: deque[int] = field(default_factory=lambda: deque(maxlen=REFUSED_MEMORY))
    """Calls refused lately: their further chunks are dropped without another ERROR."""
    handler_s: dict[int, float] = field(default_factory=dict)
    """Call id -> the child's handler time for it (from the report on its reply)."""


class Hub:
    """A gRPC server for the children of one node, and the calls it has in flight."""

    def __init__(
        self,
        node_id: str,
        settings: GrpcSettings,
        authorize: Authorize,
        certs: NodeCerts | None,
        loop: LoopThread,
        run: RunIdentity | None = None,
    ) -> None:
        self.node_id = node_id
        self.run_id = run if run is not None else RunIdentity()
        """The run this node serves: stamped on requests, checked on HELLOs and replies."""
        self.check: ModelCheck | None = None
        """Checks the models of every reply against this node's model (None: no check)."""
        self.settings = settings
        self.counters: Counter[str] = Counter()
        self._authorize = authorize
        self._certs = certs
        self._loop = loop
        self._children: dict[str, _Child] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        self._tiers_seen: set[str] = set()
        self._any_arrived = asyncio.Event()
        self._ids = itertools.count(1)
        self._server: aio.Server | None = None
        self.route: Route | None = None
        """Answers the calls children start; None refuses them."""
        self.next_hop: Callable[[str], str] | None = None
        """The child through which a node that is not a child is reached (None: none is)."""
        self._serving: set[asyncio.Task[None]] = set()
        self.figures: NodeFigures | None = None
        """This node's figures: requests it sends, its children's reports (None: not kept)."""

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, address: str) -> int:
        """Listen on ``host:port`` (port 0 picks a free one); returns the bound port."""
        return self._loop.submit(self._start(address)).result(timeout=30)

    async def _start(self, address: str) -> int:
        server = aio.server(options=self.settings.options())
        handler = grpc.stream_stream_rpc_method_handler(
            self._attach,
            request_deserializer=wire.parse,
            response_serializer=wire.serialize,
        )
        service = grpc.method_handlers_generic_handler("fedge.v1.Node", {"Attach": handler})
        server.add_generic_rpc_handlers((service,))
        try:
            if self._certs is not None:
                port = server.add_secure_port(address, self._certs.server())
            else:
                port = server.add_insecure_port(address)
        except RuntimeError:  # grpc cannot bind: a bad host, or an address of another machine
            raise FedgeError(
                f"--listen: cannot listen on {address!r}; allowed: HOST:PORT of this machine "
                "that is free (e.g. 0.0.0.0:50051, or port 0 for any free port)"
            ) from None
        port = int(port)
        if port == 0:
            raise FedgeError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        return port

    def stop(self, grace_s: float = 1.0) -> None:
        if self._server is not None:
            self._loop.submit(self._server.stop(grace_s)).result(timeout=grace_s + 10)
            self._server = None

    # -- what the transport uses (called from other threads) ------------------------------

    def attached(self, tier: str) -> list[str]:
        return sorted(n for n, c in list(self._children.items()) if c.tier == tier)

    def seen(self, tier: str) -> bool:
        """Whether a child of ``tier`` has ever attached to this hub."""
        return tier in self._tiers_seen

    def wait_for_any(self, tier: str, timeout_s: float) -> list[str]:
        """Block up to ``timeout_s`` until a child of ``tier`` is attached; returns those
        attached then (none when the time ran out)."""

        async def wait() -> None:
            while not self.attached(tier):
                self._any_arrived.clear()
                await self._any_arrived.wait()

        with contextlib.suppress(TimeoutError):
            self._loop.submit(asyncio.wait_for(wait(), timeout_s)).result()
        return self.attached(tier)

    def wait_for(self, node_ids: list[str], timeout_s: float) -> list[str]:
        """Block until every node in ``node_ids`` is attached; returns those still missing."""

        async def wait() -> None:
            await asyncio.gather(*(self._event(n).wait() for n in node_ids))

        with contextlib.suppress(TimeoutError):
            self._loop.submit(asyncio.wait_for(wait(), timeout_s)).result()
        return [n for n in node_ids if n not in self._children]

    def call(self, message: Message, parts: Sequence[bytes] | None = None) -> Future[Message]:
        """Send ``message`` to its child and resolve with the reply (see the module doc);
        ``parts``: the message already encoded (``Message.encode_parts``)."""
        return self._loop.submit(self._call(message, parts))

    # -- the event loop side -------------------------------------------------------------

    def _event(self, node_id: str) -> asyncio.Event:
        return self._arrived.setdefault(node_id, asyncio.Event())

    async def forward(self, message: Message) -> Message:
        """``message`` down to its node (for a route, on the loop); its reply."""
        return await self._call(message, None)

    def _hop(self, dst: str) -> str:
        if dst in self._children or self.next_hop is None:
            return dst
        return self.next_hop(dst)

    async def _call(self, message: Message, parts: Sequence[bytes] | None) -> Message:
        parts = message.encode_parts() if parts is None else parts
        while True:
            child = await self._attached_child(self._hop(message.dst))
            call_id = next(self._ids)
            reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            child.pending[call_id] = reply
            if child.node_id != message.dst:
                child.relayed[call_id] = message.dst
            started_s = time.monotonic()
            sent_s: list[float] = []
            out = wire.Outgoing(call_id, parts, self.settings.chunk_bytes, run=self.run_id.value)
            out.on_sent = functools.partial(self._sent, message, out, child.tier, sent_s)
            child.queue.put_nowait(out)  # streamed one chunk at a time by _attach
            self.counters["bytes_sent"] += out.nbytes
            self.counters["messages"] += 1
            try:
                answer = await reply
            except ChildGone:
                who = (self.node_id, message.dst, message.round)
                log.info("%s: %s detached during round %d; waiting for it", *who)
                continue
            finally:
                child.pending.pop(call_id, None)
                child.relayed.pop(call_id, None)
            self.counters["messages"] += 1
            self._timed(message, child, call_id, started_s, sent_s)
            return answer

    def _sent(self, message: Message, out: wire.Outgoing, tier: str, sent_s: list[float]) -> None:
        """A request's last frame is written: charge it (bytes once, by its sender)."""
        sent_s.append(time.monotonic())
        if self.figures is not None:
            self.figures.sent(message, out.nbytes, out.wire_bytes, f"down_{tier}")

    def _timed(
        self, message: Message, child: _Child, call_id: int, started_s: float, sent_s: list[float]
    ) -> None:
        """Wall latencies of one answered call: the broadcast of the request, and the rest of
        the round trip beyond the child's handler (collecting the reply)."""
        handler_s = child.handler_s.pop(call_id, 0.0)
        if self.figures is None:
            return
        done_s = time.monotonic()
        on_wire_s = (sent_s[0] if sent_s else done_s) - started_s
        collect_s = max(0.0, done_s - started_s - on_wire_s - handler_s)
        self.figures.measured(f"measured_broadcast_{child.tier}", message.round, on_wire_s)
        self.figures.measured(f"measured_collect_{child.tier}", message.round, collect_s)

    async def _attached_child(self, node_id: str) -> _Child:
        child = self._children.get(node_id)
        if child is not None:
            return child
        try:
            await asyncio.wait_for(self._event(node_id).wait(), self.settings.reattach_s)
        except TimeoutError:
            raise ChildGone(f"{node_id} is not attached to {self.node_id}") from None
        return self._children[node_id]

    async def _attach(
        self, requests: AsyncIterator[wire.Frame], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[wire.Frame | bytes]:
        requests = aiter(requests)
        child = await self._admit(requests, context)
        if child is None:
            return
        reader = asyncio.ensure_future(self._read(child, requests))
        try:
            while (frame := await child.queue.get()) is not None:
                if isinstance(frame, wire.Outgoing):
                    for piece in frame.frames():
                        yield piece  # returns once gRPC took it: one chunk at a time
                    frame.sent()
                else:
                    yield frame
        finally:
            reader.cancel()
            self._detach(child)

    async def _admit(
        self, requests: AsyncIterator[wire.Frame], context: aio.ServicerContext[Any, Any]
    ) -> _Child | None:
        """Read and check the HELLO frame; refuse (and log) anyone who fails the checks."""
        try:
            first = await asyncio.wait_for(anext(requests), self.settings.connect_timeout_s)
        except (StopAsyncIteration, TimeoutError, aio.AbortError, aio.AioRpcError) as exc:
            self.counters["rejected"] += 1  # closed, silent or over the frame limit: no HELLO
            what = type(exc).__name__
            log.warning(
                "%s: refused a child from %s: no HELLO (%s)", self.node_id, context.peer(), what
            )
            return None
        reason, code = self._refusal(first, context)
        if reason is not None:
            self.counters["rejected"] += 1
            log.warning("%s: refused a child from %s: %s", self.node_id, context.peer(), reason)
            await context.abort(code, reason)
            return None
        hello = first.hello
        child = _Child(hello.node_id, hello.tier, wire.Reassembler(self.settings.max_message_bytes))
        child.calls = wire.Reassembler(self.settings.max_message_bytes)
        previous = self._children.get(child.node_id)
        if previous is not None:
            previous.queue.put_nowait(None)
        self._children[child.node_id] = child
        self._event(child.node_id).set()
        self._tiers_seen.add(child.tier)
        self._any_arrived.set()
        log.info(
            "%s: %s %s attached from %s", self.node_id, child.tier, child.node_id, context.peer()
        )
        return child

    def _refusal(
        self, first: wire.Frame, context: aio.ServicerContext[Any, Any]
    ) -> tuple[str | None, grpc.StatusCode]:
        if first.kind != wire.Frame.HELLO:
            return "the first frame must be HELLO", grpc.StatusCode.INVALID_ARGUMENT
        hello = first.hello
        if hello.protocol != wire.PROTOCOL_VERSION:
            reason = f"protocol {hello.protocol}, this node speaks {wire.PROTOCOL_VERSION}"
            return reason, grpc.StatusCode.FAILED_PRECONDITION
        other_run = self.run_id.refusal(hello.run)
        if other_run is not None:
            return other_run, grpc.StatusCode.FAILED_PRECONDITION
        if self._certs is not None:
            names = context.auth_context().get("x509_common_name", [])
            named = [n.decode() for n in names]
            if named != [hello.node_id]:
                reason = f"claims to be {hello.node_id!r} but its certificate names {named!r}"
                return reason, grpc.StatusCode.UNAUTHENTICATED
        refused = self._authorize(hello.node_id, hello.tier)
        if refused is not None:
            return refused, grpc.StatusCode.PERMISSION_DENIED
        return None, grpc.StatusCode.OK

    async def _read(self, child: _Child, requests: AsyncIterator[wire.Frame]) -> None:
        try:
            async for frame in requests:
                self.counters["bytes_received"] += len(frame.data)
                self._take(child, frame)
        except (aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            child.queue.put_nowait(None)

    def _take(self, child: _Child, frame: wire.Frame) -> None:
        """One frame from a child: a chunk of a reply, or the error a call ended with."""
        if frame.kind == wire.Frame.PEER_REQUEST:
            self._take_call(child, frame)
            return
        reply = child.pending.get(frame.call_id)
        if frame.kind == wire.Frame.ERROR:
            child.reassembler.forget(frame.call_id)
            reason = frame.data.decode(errors="replace")
            log.warning(
                "%s: %s failed call %d: %s", self.node_id, child.node_id, frame.call_id, reason
            )
            if reply is not None and not reply.done():
                reply.set_exception(FedgeError(f"{child.node_id}: {reason}"))
            return
        if not self._admissible(child, frame, reply):
            return
        if frame.HasField("report"):  # figures of an outstanding call of this run only
            self._reported(child, frame)
        try:
            message = child.reassembler.add(frame)
        except Exception as exc:  # WireError, or anything a hostile message could provoke
            self._refuse(child, frame.call_id, exc)
            return
        if message is None or reply is None:
            return
        mismatch = self._mismatch(child, frame.call_id, message)
        if mismatch is not None:
            self._refuse(child, frame.call_id, FedgeError(f"call {frame.call_id}: {mismatch}"))
        else:
            reply.set_result(message)

    def _admissible(
        self, child: _Child, frame: wire.Frame, reply: asyncio.Future[Message] | None
    ) -> bool:
        """Whether a reply chunk may be taken: of this run, for a call still outstanding (a
        refusal is sent once per call; its further chunks are dropped silently)."""
        if frame.seq > 0 and frame.call_id in child.refused:
            return False
        refusal = self.run_id.refusal(frame.run)
        if refusal is None and (reply is None or reply.done()):
            refusal = "not outstanding (answered already or never asked)"
        if refusal is not None:
            self._refuse(child, frame.call_id, wire.WireError(f"call {frame.call_id}: {refusal}"))
            return False
        return True

    def _mismatch(self, child: _Child, call_id: int, message: Message) -> str | None:
        """Why a complete reply may not be taken (sender, models), or None. A call relayed
        through the child must be answered by the node it was for."""
        sender = child.relayed.get(call_id, child.node_id)
        if message.src != sender:
            return f"{child.node_id} answered as {message.src!r}"
        return self.check.refusal(message) if self.check is not None else None

    def _refuse(self, child: _Child, call_id: int, exc: Exception) -> None:
        """Refuse a reply (or a frame of one): count, log, ERROR to the child, fail the call."""
        self.counters["rejected"] += 1
        log.warning("%s: rejected a message from %s: %s", self.node_id, child.node_id, exc)
        child.reassembler.forget(call_id)
        child.refused.append(call_id)
        child.queue.put_nowait(wire.error(call_id, str(exc)))
        reply = child.pending.get(call_id)
        if reply is not None and not reply.done():
            reply.set_exception(exc)

    def _take_call(self, child: _Child, frame: wire.Frame) -> None:
        """A chunk of a call the child started; a whole message goes to ``route``."""
        assert child.calls is not None
        try:
            refusal = self.run_id.refusal(frame.run)
            if refusal is not None:
                raise wire.WireError(f"call {frame.call_id}: {refusal}")
            message = child.calls.add(frame)
        except wire.WireError as exc:
            child.calls.forget(frame.call_id)
            self.counters["rejected"] += 1
            log.warning("%s: rejected a call from %s: %s", self.node_id, child.node_id, exc)
            child.queue.put_nowait(wire.error(frame.call_id, str(exc), wire.Frame.PEER_ERROR))
            return
        if message is not None:
            task = asyncio.ensure_future(self._serve_call(child, frame.call_id, message))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve_call(self, child: _Child, call_id: int, message: Message) -> None:
        """Answer (or pass on) a child's call; its reply or failure goes back to the child."""
        try:
            if self.route is None:
                raise FedgeError(f"{self.node_id} takes no calls from its children")
            reply = await self.route(message, child.node_id)
            answer: wire.Frame | wire.Outgoing = wire.Outgoing(
                call_id,
                reply.encode_parts(),
                self.settings.chunk_bytes,
                run=self.run_id.value,
                kind=wire.Frame.PEER_REPLY,
            )  # streamed one chunk at a time, as the hub's own requests
            self.counters["bytes_sent"] += answer.nbytes
            self.counters["messages"] += 2
        except Exception as exc:  # refused or failed: the caller learns why, nothing hangs
            self.counters["refused_calls"] += 1
            log.warning("%s: call %s -> %s failed: %s", self.node_id, message.src, message.dst, exc)
            answer = wire.error(call_id, str(exc), wire.Frame.PEER_ERROR)
            self.counters["bytes_sent"] += len(answer.data)
        child.queue.put_nowait(answer)

    def _reported(self, child: _Child, frame: wire.Frame) -> None:
        """A child's figures (on the last chunk of a reply)."""
        if frame.call_id in child.pending:
            child.handler_s[frame.call_id] = frame.report.handler_s
        if self.figures is not None:
            self.figures.merge(frame.report)
            self.figures.received_report(child.tier, wire.report_wire_bytes(frame.report))

    def _detach(self, child: _Child) -> None:
        if self._children.get(child.node_id) is child:
            del self._children[child.node_id]
            self._event(child.node_id).clear()
            log.info("%s: %s detached", self.node_id, child.node_id)
        for reply in child.pending.values():
            if not reply.done():
                reply.set_exception(ChildGone(child.node_id))

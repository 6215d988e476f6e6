"""A protocol fuzzer for gRPC deployments: hostile input, at volume, at running servers.

Loopback only, bounded in count and time, and deterministic from a seed (the bytes, cuts and
order of every attack; not the timing). Two kinds of attacker:

- **Outsiders** (``handshake_attacks``) dial a server's port: random bytes, plain HTTP/1.1,
  TLS without a client certificate, a certificate of another CA, a valid certificate whose
  HELLO claims another node, a valid node of another run, and a first frame over gRPC's
  message limit. Each must end in a closed connection, a TLS alert or a gRPC status.
- **Insiders** (``Relay``): a man in the middle on one parent link that holds the parent's
  server certificate and the children's client certificates (a stolen key, a compromised
  router). It forwards every real frame unchanged both ways, so the run goes on as if it
  were not there, and injects hostile messages into the same streams: towards the parent
  (the cloud, or an edge) replayed and never-asked replies, replies of another run, a stray
  later chunk; towards the child (an edge, or a device) truncated, out-of-order, oversized
  and over-declared messages, models of the wrong shape, keys or dtype, requests of another
  run and replayed requests. Every injected message must come back refused (an ERROR frame
  with the reason), which the relay intercepts, so the real nodes never see the answers.

``FuzzReport`` counts per target and kind: sent, refused, and how (the reason, shortened).
``run_fuzzed`` runs a ``LocalDeployment`` with relays on the cloud link and on one edge's
device link and attacks the cloud and that edge until the plan's counts are sent.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import ssl
import tempfile
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc import StatusCode, aio

from fedge.core.message import _PREFIX, MAGIC, VERSION, Message
from fedge.core.update import Update
from fedge.deploy.local import LocalDeployment
from fedge.runtime.grpc import wire
from fedge.runtime.grpc.settings import GrpcSettings, LoopThread
from fedge.runtime.grpc.tls import NodeCerts, make_certs
from fedge.transforms.pipeline import reference_model

OUTSIDER_KINDS = (
    "random_bytes",
    "http1",
    "tls_no_cert",
    "other_ca",
    "wrong_identity",
    "wrong_run_hello",
    "oversized_frame",
)
UP_KINDS = ("replay_reply", "unasked_reply", "wrong_run_reply", "stray_chunk")
"""Injected towards the parent (hub) of a link."""
DOWN_KINDS = (
    "truncated",
    "out_of_order",
    "oversized",
    "declared_size",
    "wrong_shape",
    "wrong_keys",
    "wrong_dtype",
    "wrong_run_request",
    "replay_request",
)
"""Injected towards the child of a link."""
REPLAYS = ("replay_reply", "replay_request")
INJECTED_BASE = 1 << 40
"""Call ids of injected messages start here, far above any real call id."""
OTHER_RUN = "fuzz-another-run"


@dataclass
class KindCount:
    sent: int = 0
    refused: int = 0
    how: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: str | None) -> None:
        self.sent += 1
        if outcome is not None:
            self.refused += 1
            self.how[outcome] += 1


@dataclass
class FuzzReport:
    """Per target node and kind of attack: sent, refused, how it was refused."""

    counts: dict[tuple[str, str], KindCount] = field(default_factory=dict)
    logged: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per node: refusals in its log (fedge's own lines and grpc's handshake failures)."""
    rss_mib: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per node: resident memory when the attack started and when it ended."""
    wall_s: float = 0.0
    up_after: dict[str, bool] = field(default_factory=dict)
    """Per node: whether its process was still running when the attack ended."""
    parts_s: dict[str, float] = field(default_factory=dict)
    """Wall time of each part of the attack (outsiders, each injection)."""

    def add(self, target: str, kind: str, outcome: str | None) -> None:
        self.counts.setdefault((target, kind), KindCount()).add(outcome)

    def sent(self) -> int:
        return sum(c.sent for c in self.counts.values())

    def refused(self) -> int:
        return sum(c.refused for c in self.counts.values())

    def lines(self) -> list[str]:
        out = [f"{'target':8} {'kind':18} {'sent':>5} {'refused':>7}  how"]
        for (target, kind), c in sorted(self.counts.items()):
            how = "; ".join(f"{n}x {h}" for h, n in c.how.most_common(3))
            out.append(f"{target:8} {kind:18} {c.sent:5d} {c.refused:7d}  {how}")
        out.append(f"total: {self.sent()} sent, {self.refused()} refused in {self.wall_s:.1f} s")
        out.append("parts: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.parts_s.items()))
        for node, tally in sorted(self.logged.items()):
            out.append(f"logged at {node}: " + ", ".join(f"{k} {v}" for k, v in tally.items()))
        for node, (before, after) in sorted(self.rss_mib.items()):
            up = "up" if self.up_after.get(node) else "NOT RUNNING"
            out.append(f"rss {node}: {before:.1f} MiB -> {after:.1f} MiB ({up} after the attack)")
        return out


def _short(reason: str) -> str:
    """A refusal reason without the numbers that differ from message to message."""
    reason = re.sub(r"call \d+: ", "", reason)
    reason = re.sub(r"\d{3,}", "N", reason)
    return reason[:90]


# -- outsiders --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A server under attack: its node id, address, the identities it admits."""

    node_id: str
    address: str
    member: str
    """A node the server admits (its certificate is used for the insider-grade HELLOs)."""
    other: str
    """Another node whose id the HELLO claims with ``member``'s certificate."""
    tier: str


class Outsider:
    """Attacks on a server's port before any fedge message is accepted."""

    def __init__(self, certs: Path, settings: GrpcSettings, rng: random.Random) -> None:
        self.certs = certs
        self.settings = settings
        self.rng = rng
        self._foreign: tempfile.TemporaryDirectory[str] | None = None
        self._channels: dict[tuple[str, str], aio.Channel] = {}

    async def attack(self, kind: str, target: Target) -> str | None:
        """One attack of ``kind``; returns how it was refused, None if it was not."""
        if kind in ("random_bytes", "http1", "tls_no_cert", "other_ca"):
            return await self._raw(kind, target)
        frame = wire.hello(target.other, target.tier)
        if kind == "wrong_run_hello":
            frame = wire.hello(target.member, target.tier, run=OTHER_RUN)
        elif kind == "oversized_frame":
            size = self.settings.chunk_bytes + (64 << 10) + 1
            frame = wire.Frame(kind=wire.Frame.CHUNK, data=self.rng.randbytes(size))
        return await self._grpc(target, frame)

    def _payload(self, kind: str, target: Target) -> bytes:
        if kind == "random_bytes":
            return self.rng.randbytes(self.rng.randint(1, 4096))
        if kind == "http1":
            return f"GET /fedge.v1.Node/Attach HTTP/1.1\r\nHost: {target.address}\r\n\r\n".encode()
        return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    def _tls(self, kind: str) -> ssl.SSLContext | None:
        if kind == "tls_no_cert":
            return ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
        if kind == "other_ca":
            if self._foreign is None:  # a CA of its own, and a node certificate it signed
                self._foreign = tempfile.TemporaryDirectory(prefix="fedge-fuzz-ca-")
                make_certs(self._foreign.name, ["edge0"])
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            foreign = Path(self._foreign.name)
            context.load_cert_chain(foreign / "edge0.pem", foreign / "edge0.key")
            return context
        return None

    async def _raw(self, kind: str, target: Target) -> str | None:
        host, port = target.address.rsplit(":", 1)
        context = self._tls(kind)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, int(port), ssl=context, server_hostname="localhost" if context else None
                ),
                5.0,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            return f"TLS handshake failed: {_ssl_reason(exc)}"
        try:
            writer.write(self._payload(kind, target))
            await writer.drain()
            while await asyncio.wait_for(reader.read(1 << 16), 5.0):
                pass  # whatever the server says, it must end the connection
            return "connection closed by the server"
        except TimeoutError:
            return None
        except OSError as exc:
            return f"TLS alert: {_ssl_reason(exc)}"
        finally:
            writer.close()

    def _channel(self, target: Target) -> aio.Channel:
        key = (target.address, target.member)
        if key not in self._channels:
            creds = NodeCerts.load(self.certs, target.member).channel()
            # no send limit here: the oversized frame must reach the server to be refused there
            options = [o for o in self.settings.options() if o[0] != "grpc.max_send_message_length"]
            options.append(("grpc.max_send_message_length", -1))
            self._channels[key] = aio.secure_channel(target.address, creds, options)
        return self._channels[key]

    async def _grpc(self, target: Target, frame: wire.Frame) -> str | None:
        async def frames() -> AsyncIterator[wire.Frame]:
            yield frame

        call = self._channel(target).stream_stream(
            wire.SERVICE_METHOD,
            request_serializer=wire.Frame.SerializeToString,
            response_deserializer=wire.Frame.FromString,
        )(frames(), timeout=10.0)
        try:
            async for _ in call:
                pass
        except aio.AioRpcError as exc:
            if exc.code() in (StatusCode.DEADLINE_EXCEEDED, StatusCode.UNAVAILABLE):
                return None
            return f"{exc.code().name}: {_short(exc.details() or '')}"
        return None  # the server took the stream: not refused

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        if self._foreign is not None:
            self._foreign.cleanup()


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or type(exc).__name__)


# -- insiders ---------------------------------------------------------------------------


@dataclass
class _Link:
    """One child's stream through the relay, and what the relay learned from it."""

    node_id: str
    up: asyncio.Queue[wire.Frame | None]
    down: asyncio.Queue[wire.Frame | None]
    run: str = ""
    requests: dict[int, list[wire.Frame]] = field(default_factory=dict)
    replies: dict[int, list[wire.Frame]] = field(default_factory=dict)
    answered: list[int] = field(default_factory=list)
    model_request: Message | None = None
    waiting_up: dict[int, deque[asyncio.Future[str]]] = field(default_factory=dict)
    """Call id of messages injected towards the parent -> their refusals to come, in order
    (a replay reuses a real call id, several times)."""
    waiting_down: dict[int, deque[asyncio.Future[str]]] = field(default_factory=dict)
    """The same for messages injected towards the child."""


class Relay:
    """A gRPC man in the middle on one parent's port (see the module doc)."""

    def __init__(
        self, parent: str, upstream: str, certs: Path, settings: GrpcSettings, victim: str
    ) -> None:
        self.parent = parent
        self.upstream = upstream
        self.certs = certs
        self.settings = settings
        self.victim = victim
        """The child whose stream carries the injected messages."""
        self.links: dict[str, _Link] = {}
        self.ready = asyncio.Event()
        """Set once the victim's stream has carried a request with a model."""
        self.answered = asyncio.Event()
        """Set once the victim has answered a request (there is something to replay)."""
        self._server: aio.Server | None = None

    async def start(self) -> str:
        server = aio.server(options=self.settings.options())
        server.add_generic_rpc_handlers((_service(self._attach),))
        creds = NodeCerts.load(self.certs, self.parent).server()
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        self._server = server
        return f"127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0.5)

    async def _attach(
        self, requests: AsyncIterator[wire.Frame], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[wire.Frame]:
        requests = aiter(requests)
        hello = await anext(requests)
        node = hello.hello.node_id
        link = _Link(node, asyncio.Queue(), asyncio.Queue())
        link.up.put_nowait(hello)
        creds = NodeCerts.load(self.certs, node).channel()
        async with aio.secure_channel(self.upstream, creds, self.settings.options()) as channel:
            stream = channel.stream_stream(
                wire.SERVICE_METHOD,
                request_serializer=wire.Frame.SerializeToString,
                response_deserializer=wire.Frame.FromString,
            )(_drain(link.up))
            self.links[node] = link
            pumps = [
                asyncio.ensure_future(self._pump_up(link, requests)),
                asyncio.ensure_future(self._pump_down(link, stream)),
            ]
            try:
                while (frame := await link.down.get()) is not None:
                    yield frame
            finally:
                for pump in pumps:
                    pump.cancel()
                link.up.put_nowait(None)
            status = pumps[1].exception() if pumps[1].done() and not pumps[1].cancelled() else None
            if isinstance(status, aio.AioRpcError):
                await context.abort(status.code(), status.details() or "")

    async def _pump_up(self, link: _Link, requests: AsyncIterator[wire.Frame]) -> None:
        """Child -> parent: real replies pass; refusals of injected requests are taken."""
        try:
            async for frame in requests:
                if _refusal(link.waiting_down, frame) or frame.call_id >= INJECTED_BASE:
                    continue  # the answer to an injected request is the fuzzer's
                link.replies.setdefault(frame.call_id, []).append(frame)
                link.up.put_nowait(frame)
                if frame.last or frame.kind == wire.Frame.ERROR:
                    self._answered(link, frame.call_id)
        finally:
            link.down.put_nowait(None)

    def _answered(self, link: _Link, call_id: int) -> None:
        link.answered.append(call_id)
        for old in list(link.requests)[:-8]:  # keep the last few for replays
            link.requests.pop(old, None)
            link.replies.pop(old, None)
        if link.node_id == self.victim and link.requests.get(call_id):
            self.answered.set()

    async def _pump_down(self, link: _Link, stream: Any) -> None:
        """Parent -> child: real requests pass; refusals of injected replies are taken."""
        try:
            async for frame in stream:
                if _refusal(link.waiting_up, frame) or frame.call_id >= INJECTED_BASE:
                    continue
                self._learn(link, frame)
                link.down.put_nowait(frame)
        finally:
            link.down.put_nowait(None)

    def _learn(self, link: _Link, frame: wire.Frame) -> None:
        if frame.kind != wire.Frame.CHUNK:
            return
        link.run = frame.run or link.run
        frames = link.requests.setdefault(frame.call_id, [])
        frames.append(frame)
        if frame.last:
            message = Message.decode(b"".join(f.data for f in frames))
            if reference_model(message) is not None:
                link.model_request = message
                if link.node_id == self.victim:
                    self.ready.set()


def _refusal(waiting: dict[int, deque[asyncio.Future[str]]], frame: wire.Frame) -> bool:
    """Take ``frame`` as the refusal of the oldest injected message it answers, if any."""
    queue = waiting.get(frame.call_id)
    if not queue or frame.kind != wire.Frame.ERROR:
        return False
    waiter = queue.popleft()
    if not queue:
        del waiting[frame.call_id]
    if not waiter.done():
        waiter.set_result(_short(frame.data.decode(errors="replace")))
    return True


def _service(handler: Callable[..., AsyncIterator[wire.Frame]]) -> Any:
    method = grpc.stream_stream_rpc_method_handler(
        handler,
        request_deserializer=wire.Frame.FromString,
        response_serializer=wire.Frame.SerializeToString,
    )
    return grpc.method_handlers_generic_handler("fedge.v1.Node", {"Attach": method})


async def _drain(queue: asyncio.Queue[wire.Frame | None]) -> AsyncIterator[wire.Frame]:
    while (frame := await queue.get()) is not None:
        yield frame


class Insider:
    """Builds the hostile messages of each kind from what a link carried."""

    def __init__(self, settings: GrpcSettings, rng: random.Random) -> None:
        self.settings = settings
        self.rng = rng
        self._ids = itertools.count(INJECTED_BASE)

    def up(self, kind: str, link: _Link) -> tuple[int, list[wire.Frame]]:
        """A hostile reply towards the parent; returns its call id and frames."""
        real = link.replies[link.answered[-1]] if link.answered else []
        data = b"".join(f.data for f in real) or Message("x", "y", "z").encode()
        if kind == "replay_reply":
            return real[0].call_id, list(real)
        call_id = next(self._ids)
        run = OTHER_RUN if kind == "wrong_run_reply" else link.run
        frames = list(wire.chunks(call_id, data, self.settings.chunk_bytes, run))
        if kind == "stray_chunk":
            frames = [wire.Frame(kind=wire.Frame.CHUNK, call_id=call_id, seq=1, data=data[:64])]
            frames[0].run = link.run
        return call_id, frames

    def down(self, kind: str, link: _Link) -> tuple[int, list[wire.Frame]]:
        """A hostile request towards the child; returns its call id and frames."""
        if kind == "replay_request":
            call_id = self._replayable(link)
            return call_id, list(link.requests[call_id])
        assert link.model_request is not None
        request = link.model_request
        call_id = next(self._ids)
        chunk = self.settings.chunk_bytes
        if kind in ("wrong_shape", "wrong_keys", "wrong_dtype"):
            request = _bent(request, kind)
        data = request.encode()
        run = OTHER_RUN if kind == "wrong_run_request" else link.run
        if kind == "truncated":
            data = data[: self.rng.randint(1, len(data) - 1)]
        elif kind == "oversized":
            data = self.rng.randbytes(self.settings.max_message_bytes + 1)
        elif kind == "declared_size":
            data = _declared(self.rng)
        frames = list(wire.chunks(call_id, data, chunk, run))
        if kind == "out_of_order":
            frames = list(wire.chunks(call_id, data, max(1, len(data) // 3), run))
            frames[0], frames[1] = frames[1], frames[0]
        return call_id, frames

    def _replayable(self, link: _Link) -> int:
        answered = [c for c in link.answered if c in link.requests]
        return answered[self.rng.randrange(len(answered))]


def _bent(request: Message, kind: str) -> Message:
    """``request`` with its model bent out of shape (one tensor: shape, name or dtype)."""
    payload = dict(request.payload)
    for name, value in payload.items():
        if isinstance(value, Update) and value.kind == "state":
            state = dict(value.state)
            key = next(iter(state))
            tensor = state.pop(key)
            if kind == "wrong_shape":
                state[key] = torch.zeros(tensor.numel() + 1, dtype=tensor.dtype)
            elif kind == "wrong_keys":
                state[key + "_extra"] = tensor
            else:
                other = torch.float32 if tensor.dtype == torch.float64 else torch.float64
                state[key] = tensor.to(other)
            payload[name] = replace(value, state=state)
            break
    return Message(request.src, request.dst, request.kind, request.round, payload)


def _declared(rng: random.Random) -> bytes:
    """A message whose header declares far more than it holds (a huge tensor, or header)."""
    if rng.random() < 0.5:
        shape = [rng.randint(1 << 20, 1 << 40), rng.randint(1 << 20, 1 << 40)]
        header = (
            b'{"src":"a","dst":"b","kind":"train","round":1,"payload":{"__map__":[["x",'
            b'{"__tensor__":0,"dtype":"float32","shape":%b}]]}}' % str(shape).encode()
        )
        return _PREFIX.pack(MAGIC, VERSION, len(header)) + header + rng.randbytes(64)
    return _PREFIX.pack(MAGIC, VERSION, (1 << 32) - 1) + rng.randbytes(256)


# -- the plan and the run ---------------------------------------------------------------


@dataclass(frozen=True)
class FuzzPlan:
    """How many messages of each kind to send at each target, and the limits."""

    outsider: Mapping[str, int]
    up: Mapping[str, int]
    down: Mapping[str, int]
    seed: int = 0
    time_limit_s: float = 120.0
    refusal_timeout_s: float = 30.0
    """How long the last injected message waits for its refusal (they queue behind each
    other) before those still unanswered count as not refused."""

    @staticmethod
    def spread(total: int, seed: int = 0) -> FuzzPlan:
        """About ``total`` messages over every kind, per target: outsiders 30 %, insiders
        towards the parent 30 %, towards the child 40 % (split evenly within each)."""

        def even(kinds: tuple[str, ...], n: int) -> dict[str, int]:
            return {k: max(1, -(-n // len(kinds))) for k in kinds}  # rounded up

        return FuzzPlan(
            even(OUTSIDER_KINDS, -(-total * 3 // 20)),
            even(UP_KINDS, -(-total * 3 // 20)),
            even(DOWN_KINDS, -(-total * 4 // 10)),
            seed,
        )


class Fuzzer:
    """Runs a ``FuzzPlan`` against outsider targets and relay links (on its own loop)."""

    def __init__(self, plan: FuzzPlan, certs: Path, settings: GrpcSettings) -> None:
        self.plan = plan
        self.certs = certs
        self.settings = settings
        self.rng = random.Random(plan.seed)
        self.report = FuzzReport()
        self.outsider = Outsider(certs, settings, self.rng)
        self.insider = Insider(settings, self.rng)

    def schedule(self, kinds: Mapping[str, int]) -> list[str]:
        """Every message of ``kinds`` in a seeded order."""
        order = [k for k, n in kinds.items() for _ in range(n)]
        self.rng.shuffle(order)
        return order

    async def outsiders(self, targets: list[Target], parallel: int = 8) -> None:
        """Every outsider attack of the plan at every target, ``parallel`` at a time."""
        slots = asyncio.Semaphore(parallel)

        async def one(kind: str, target: Target) -> None:
            async with slots:
                self.report.add(target.node_id, kind, await self.outsider.attack(kind, target))

        attacks = [(k, t) for t in targets for k in self.schedule(self.plan.outsider)]
        await asyncio.gather(*(one(k, t) for k, t in attacks))
        await self.outsider.close()

    async def inject(self, relay: Relay, target: str, kinds: Mapping[str, int], up: bool) -> None:
        """Inject ``kinds`` into the victim's stream of ``relay``; ``target`` is the node
        that receives them (the relay's parent when ``up``, else the victim)."""
        await relay.ready.wait()
        link = relay.links[relay.victim]
        order = self.schedule(kinds)
        pending = [self._send(link, kind, up) for kind in order if kind not in REPLAYS]
        await relay.answered.wait()  # a replay needs a request answered, and its reply
        pending += [self._send(link, kind, up) for kind in order if kind in REPLAYS]
        if pending:
            await asyncio.wait([w for _, w in pending], timeout=self.plan.refusal_timeout_s)
        for kind, refusal in pending:
            self.report.add(target, kind, refusal.result() if refusal.done() else None)

    def _send(self, link: _Link, kind: str, up: bool) -> tuple[str, asyncio.Future[str]]:
        """Put one hostile message into ``link``; returns its kind and its refusal to come."""
        call_id, frames = (self.insider.up if up else self.insider.down)(kind, link)
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        (link.waiting_up if up else link.waiting_down).setdefault(call_id, deque()).append(waiter)
        queue = link.up if up else link.down
        for frame in frames:
            queue.put_nowait(frame)
        return kind, waiter


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux ``/proc``), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


LOG_PATTERNS = {
    "handshake_failed": "Handshake failed",
    "refused_child": "refused a child",
    "rejected_reply": "rejected a message",
    "rejected_request": "rejected a request",
}


def tally_logs(log: str) -> dict[str, int]:
    """How many refusals of each kind a node's log records."""
    return {name: log.count(text) for name, text in LOG_PATTERNS.items()}


def run_fuzzed(
    deployment: LocalDeployment, plan: FuzzPlan, timeout_s: float = 300.0
) -> tuple[Path, FuzzReport]:
    """Start ``deployment`` with relays in its cloud link and in the first edge's device
    link, attack the cloud and that edge by ``plan`` while the run goes on, wait for the
    run to end; returns its run directory and the fuzzer's report."""
    assert deployment.certs is not None and deployment.plan.hierarchical
    certs = Path(deployment.certs)
    settings = deployment.cfg.grpc
    edge = deployment.plan.edges[0]
    device = deployment.plan.children(edge)[0]
    loop = LoopThread("fedge-fuzz")
    real = dict(deployment.address)
    relays = {
        "cloud": Relay("cloud", real["cloud"], certs, settings, victim=edge),
        edge: Relay(edge, real[edge], certs, settings, victim=device),
    }
    try:
        via = {n: loop.submit(r.start()).result(timeout=30) for n, r in relays.items()}
        deployment.start("cloud")
        deployment.address["cloud"] = via["cloud"]
        for e in deployment.plan.edges:
            deployment.start(e)
        deployment.address[edge] = via[edge]
        for group in deployment.groups:
            deployment.start(group)
        deployment.address.update(real)
        report = _attack(deployment, plan, relays, loop, timeout_s)
        code = deployment.wait_cloud(timeout_s)
        if code != 0:
            raise RuntimeError(f"the cloud exited with status {code}")
    finally:
        deployment.stop()
        for relay in relays.values():
            loop.submit(relay.stop()).result(timeout=10)
        loop.stop()
    for node in ("cloud", edge):
        log = (deployment.directory / "logs" / f"{node}.log").read_text(errors="replace")
        report.logged[node] = tally_logs(log)
    return deployment.run_dir(), report


def _attack(
    deployment: LocalDeployment,
    plan: FuzzPlan,
    relays: dict[str, Relay],
    loop: LoopThread,
    timeout_s: float,
) -> FuzzReport:
    edge = deployment.plan.edges[0]
    fuzzer = Fuzzer(plan, Path(str(deployment.certs)), deployment.cfg.grpc)
    devices = deployment.plan.children(edge)
    targets = [
        Target("cloud", deployment.address["cloud"], edge, deployment.plan.edges[-1], "edge"),
        Target(edge, deployment.address[edge], devices[0], devices[-1], "device"),
    ]
    pids = {"cloud": deployment.processes["cloud"].pid, edge: deployment.processes[edge].pid}
    for relay in relays.values():  # the first round is over: memory has warmed up
        loop.submit(relay.answered.wait()).result(timeout=timeout_s)
    before = {n: rss_mib(p) for n, p in pids.items()}
    started = time.monotonic()

    async def timed(name: str, part: Awaitable[None]) -> None:
        begun = time.monotonic()
        await part
        fuzzer.report.parts_s[name] = time.monotonic() - begun

    async def everything() -> None:
        await asyncio.gather(
            timed("outsiders", fuzzer.outsiders(targets)),
            timed("to cloud", fuzzer.inject(relays["cloud"], "cloud", plan.up, up=True)),
            timed(f"to {edge} (down)", fuzzer.inject(relays["cloud"], edge, plan.down, up=False)),
            timed(f"to {edge} (up)", fuzzer.inject(relays[edge], edge, plan.up, up=True)),
        )

    loop.submit(asyncio.wait_for(everything(), plan.time_limit_s)).result()
    fuzzer.report.wall_s = time.monotonic() - started
    up = {n: deployment.processes[n].poll() is None for n in pids}
    fuzzer.report.up_after = up
    fuzzer.report.rss_mib = {n: (before[n], rss_mib(p) if up[n] else 0.0) for n, p in pids.items()}
    return fuzzer.report

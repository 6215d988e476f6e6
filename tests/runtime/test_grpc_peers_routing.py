"""Calls a child starts on its own stream, routed by its parent (TLS on loopback).

An edge hub with a ``Router`` relays a device's call down to another device; a call the
policy refuses, or for a node nobody routes to, fails at once with the reason; a device
that listens answers the peer that dialled it with its own app; a parent that takes no
calls says so. Every wait is bounded by the short timeouts of ``SETTINGS``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deploy_helpers import FAST_GRPC
from fedge.core.message import Message
from fedge.core.node import NodeApp, NodeContext
from fedge.runtime.grpc.attach import Attachment, CallFailed
from fedge.runtime.grpc.node import NodeProcess
from fedge.runtime.grpc.route import Reach, Router
from fedge.runtime.grpc.tls import make_certs
from fedge.runtime.grpc.transport import GrpcTransport

pytestmark = pytest.mark.grpc

SETTINGS = FAST_GRPC
NODES = ["edge0", "d0", "d1", "d2"]
PEERS = {"d0": {"d1"}, "d1": {"d0"}, "d2": set()}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"), NODES)


def _model(message: Message, ctx: NodeContext) -> Message:
    """A peer's published model: a tensor that depends on who answers."""
    seed = int(ctx.node_id[1:])
    return message.reply("model", {"x": torch.arange(5000, dtype=torch.float32) + seed})


def _train(message: Message, ctx: NodeContext) -> Message:
    return message.reply("trained", {})


def _app(node_id: str) -> NodeApp:
    return NodeApp(node_id, "device", {"get_model": _model, "peer_train": _train})


def _admit(message: Message, came_from: str) -> str | None:
    """The test's policy: get_model between peers, sent by the source itself."""
    if message.kind != "get_model":
        return f"{message.kind!r} is not a peer call"
    if came_from != message.src:
        return f"{came_from!r} may not send as {message.src!r}"
    if message.dst not in PEERS.get(message.src, set()) and message.dst != "ghost":
        return f"{message.src!r} may not call {message.dst!r}"
    return None


class Edge:
    """An edge hub that routes its devices' calls, and one process per device."""

    def __init__(self, certs: Path) -> None:
        self.certs = str(certs)
        self.process = NodeProcess(SETTINGS, self.certs, seed=1)
        self.process.serve("edge0", "127.0.0.1:0", lambda n, t: None)
        assert self.process.hub is not None
        self.router = Router(
            "edge0", SETTINGS, _admit, self.process.hub, below=lambda d: d.startswith("d")
        )
        self.address = f"localhost:{self.process.port}"
        self.devices: dict[str, tuple[NodeProcess, Attachment]] = {}

    def device(self, node_id: str) -> Attachment:
        process = NodeProcess(SETTINGS, self.certs, seed=1)
        attachment = process.attach(_app(node_id), [self.address])
        self.devices[node_id] = (process, attachment)
        return attachment

    def ask(self, attachment: Attachment, message: Message) -> Message:
        process = self.devices[attachment.app.node_id][0]
        return process.loop.submit(attachment.request(message)).result(timeout=30)

    def close(self) -> None:
        for process, _ in self.devices.values():
            process.close()
        self.process.close()


@pytest.fixture
def edge(certs: Path) -> Iterator[Edge]:
    e = Edge(certs)
    yield e
    e.close()


def _attached(edge: Edge, ids: list[str]) -> None:
    assert edge.process.hub is not None
    assert edge.process.hub.wait_for(ids, 5.0) == []


def test_a_device_call_is_relayed_down_to_its_peer_and_the_reply_comes_back(edge: Edge) -> None:
    d0 = edge.device("d0")
    edge.device("d1")
    _attached(edge, ["d0", "d1"])
    reply = edge.ask(d0, Message("d0", "d1", "get_model", 3))
    assert (reply.src, reply.dst, reply.kind, reply.round) == ("d1", "d0", "model", 3)
    assert torch.equal(reply.payload["x"], torch.arange(5000, dtype=torch.float32) + 1)
    assert edge.process.hub is not None and edge.process.hub.counters["messages"] >= 4


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (Message("d0", "d2", "get_model", 1), "'d0' may not call 'd2'"),
        (Message("d0", "d1", "peer_train", 1), "'peer_train' is not a peer call"),
        (Message("d2", "d1", "get_model", 1), "'d0' may not send as 'd2'"),
        (Message("d0", "ghost", "get_model", 1), "edge0 has no route to 'ghost'"),
    ],
)
def test_a_call_the_policy_or_the_routes_refuse_fails_at_once_with_the_reason(
    edge: Edge, message: Message, reason: str
) -> None:
    d0 = edge.device("d0")
    edge.device("d1")
    edge.device("d2")
    _attached(edge, ["d0", "d1", "d2"])
    started = time.monotonic()
    with pytest.raises(CallFailed, match="refused: ") as info:
        edge.ask(d0, message)
    assert reason in str(info.value)
    assert time.monotonic() - started < 5.0  # refused, not timed out
    assert edge.process.hub is not None and edge.process.hub.counters["refused_calls"] == 1


def test_a_parent_without_a_router_refuses_calls(edge: Edge) -> None:
    assert edge.process.hub is not None
    edge.process.hub.route = None
    d0 = edge.device("d0")
    _attached(edge, ["d0"])
    with pytest.raises(CallFailed, match="edge0 takes no calls from its children"):
        edge.ask(d0, Message("d0", "d1", "get_model", 1))


def test_a_listening_device_answers_the_peer_that_dialled_it_with_its_own_app(
    certs: Path,
) -> None:
    """Direct mode: d1 listens as itself; d0 dials it and calls through a transport."""
    host = NodeProcess(SETTINGS, str(certs), seed=1)
    guest = NodeProcess(SETTINGS, str(certs), seed=1)
    try:
        hub = host.listen("d1", "127.0.0.1:0", lambda n, t: None if n in PEERS["d1"] else "no")
        app = _app("d1")
        control = Attachment(app, 1, ["unused:1"], SETTINGS, None, host.own_thread())
        Router("d1", SETTINGS, _admit, hub, local=(control.handle, host.own_thread()))
        address = f"localhost:{host.ports['d1']}"
        ways: dict[str, Attachment] = {}
        reach = Reach("d0", SETTINGS, guest.loop, {"device": ["d1"]}, ways.get)
        transport = GrpcTransport(reach, "d0", ["d1"])
        ways["d1"] = guest.attach(_app("d0"), [address], transport)
        assert transport.nodes("device") == ["d1"]
        replies = transport.send([Message("d0", "d1", "get_model", 2)])
        assert [r.src for r in replies] == ["d1"]
        assert torch.equal(replies[0].payload["x"], torch.arange(5000, dtype=torch.float32) + 1)
        # a destination the device has no stream to is absent, not awaited
        assert transport.send([Message("d0", "d2", "get_model", 2)]) == []
        assert transport.stats()["dropped"] == 1
    finally:
        guest.close()
        host.close()

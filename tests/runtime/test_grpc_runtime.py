"""The gRPC runtime on loopback: TLS with per-node identity, chunks, limits, deadlines,
reconnection and failover. Every test is bounded by the short timeouts of ``SETTINGS``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from deploy_helpers import FAST_GRPC
from fedge.core.message import Message
from fedge.core.node import NodeApp, NodeContext
from fedge.runtime.grpc import wire
from fedge.runtime.grpc.node import NodeProcess
from fedge.runtime.grpc.settings import GrpcSettings
from fedge.runtime.grpc.tls import NodeCerts, make_certs
from fedge.runtime.grpc.transport import GrpcTransport

pytestmark = pytest.mark.grpc

SETTINGS = FAST_GRPC
NODES = ["cloud", "d0", "d1", "d2", "mallory"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"), NODES)


def _double(message: Message, ctx: NodeContext) -> Message:
    return message.reply("out", {"x": message.payload["x"] * 2})


def _slow(message: Message, ctx: NodeContext) -> Message:
    time.sleep(float(message.payload["sleep_s"]))
    return message.reply("out", {})


def _huge(message: Message, ctx: NodeContext) -> Message:
    return message.reply("out", {"x": torch.zeros(SETTINGS.max_message_bytes // 4 + 1)})


def device_app(node_id: str) -> NodeApp:
    return NodeApp(node_id, "device", {"double": _double, "slow": _slow, "huge": _huge})


def _authorize(node_id: str, tier: str) -> str | None:
    return None if node_id.startswith("d") and tier == "device" else f"{node_id} is not a device"


class Cloud:
    """A hub at the cloud and processes hosting devices, all in this test process."""

    def __init__(self, certs: Path | None, settings: GrpcSettings = SETTINGS) -> None:
        self.settings = settings
        self.certs = str(certs) if certs else None
        self.process = NodeProcess(settings, self.certs, seed=1)
        self.transport: GrpcTransport = self.process.serve("cloud", "127.0.0.1:0", _authorize)
        self.address = f"localhost:{self.process.port}"
        self.devices: dict[str, NodeProcess] = {}

    def start_device(self, node_id: str, parents: list[str] | None = None) -> NodeProcess:
        process = NodeProcess(self.settings, self.certs, seed=1)
        process.attach(device_app(node_id), parents or [self.address])
        self.devices[node_id] = process
        return process

    def kill_device(self, node_id: str) -> None:
        self.devices.pop(node_id).close()

    def close(self) -> None:
        for process in self.devices.values():
            process.close()
        self.process.close()


@pytest.fixture
def cloud(certs: Path) -> Iterator[Cloud]:
    c = Cloud(certs)
    yield c
    c.close()


def _ask(cloud: Cloud, kind: str, ids: list[str], **payload: object) -> list[Message]:
    msgs = [Message("cloud", d, kind, 1, dict(payload)) for d in ids]
    return cloud.transport.send(msgs, payload.pop("deadline_s", None))  # type: ignore[arg-type]


def test_models_travel_in_chunks_over_tls_and_come_back_exact(cloud: Cloud) -> None:
    for d in ("d0", "d1"):
        cloud.start_device(d)
    assert cloud.process.hub is not None
    assert cloud.process.hub.wait_for(["d0", "d1"], 5.0) == []
    assert cloud.transport.nodes("device") == ["d0", "d1"]
    x = torch.randn(10_000)  # 40 kB: ten chunks of 4 kB each way
    replies = _ask(cloud, "double", ["d0", "d1"], x=x)
    assert sorted(r.src for r in replies) == ["d0", "d1"]
    assert all(torch.equal(r.payload["x"], x * 2) for r in replies)
    stats = cloud.transport.stats()
    assert stats["bytes_down"] >= 2 * x.numel() * 4
    assert stats["bytes_up"] >= 2 * x.numel() * 4


def _raw_stream(address: str, creds: grpc.ChannelCredentials | None, frames: list[wire.Frame]):
    channel = grpc.secure_channel(address, creds) if creds else grpc.insecure_channel(address)
    call = channel.stream_stream(
        wire.SERVICE_METHOD,
        request_serializer=wire.Frame.SerializeToString,
        response_deserializer=wire.Frame.FromString,
    )
    return channel, call(iter(frames), timeout=5.0)


def _refused(address: str, creds: grpc.ChannelCredentials | None, hello: wire.Frame) -> str:
    channel, stream = _raw_stream(address, creds, [hello])
    try:
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        return f"{info.value.code().name}: {info.value.details()}"
    finally:
        channel.close()


def test_a_node_claiming_another_identity_is_refused_and_the_server_stays_up(
    cloud: Cloud, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mallory = NodeCerts.load(certs, "mallory").channel()
    with caplog.at_level(logging.WARNING, logger="fedge.grpc"):
        reason = _refused(cloud.address, mallory, wire.hello("d0", "device"))
    assert reason.startswith("UNAUTHENTICATED") and "mallory" in reason
    assert "claims to be 'd0'" in caplog.text
    unknown = _refused(cloud.address, mallory, wire.hello("mallory", "device"))
    assert unknown.startswith("PERMISSION_DENIED")
    no_client_cert = grpc.ssl_channel_credentials(NodeCerts.load(certs, "cloud").ca)
    channel, stream = _raw_stream(cloud.address, no_client_cert, [wire.hello("d0", "device")])
    with pytest.raises(grpc.RpcError):
        list(stream)
    channel.close()
    cloud.start_device("d0")
    assert _ask(cloud, "double", ["d0"], x=torch.ones(3))[0].payload["x"].tolist() == [2, 2, 2]
    assert cloud.transport.stats()["rejected"] >= 2


def test_malformed_out_of_order_and_oversized_messages_are_rejected(
    cloud: Cloud, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d1 = NodeCerts.load(certs, "d1").channel()
    garbage = wire.Frame(kind=wire.Frame.CHUNK, call_id=7, seq=0, last=True, data=b"not fedge")
    skipped = wire.Frame(kind=wire.Frame.CHUNK, call_id=8, seq=3, last=True, data=b"x")
    with caplog.at_level(logging.WARNING, logger="fedge.grpc"):
        channel, stream = _raw_stream(
            cloud.address, d1, [wire.hello("d1", "device"), garbage, skipped]
        )
        answers = list(stream)  # the stream ends when the client half-closes
        channel.close()
    assert [a.kind for a in answers] == [wire.Frame.ERROR, wire.Frame.ERROR]
    # neither call was ever asked: both are refused at their first chunk, nothing buffered
    assert all("not outstanding" in a.data.decode() for a in answers)
    cloud.start_device("d0")
    with caplog.at_level(logging.WARNING, logger="fedge.grpc"):
        assert _ask(cloud, "huge", ["d0"]) == []
    assert "exceeds max_message_bytes" in caplog.text
    assert _ask(cloud, "double", ["d0"], x=torch.ones(2))[0].payload["x"].tolist() == [2, 2]


def _fast_and_slow(cloud: Cloud, slow_s: float) -> list[Message]:
    """Attach d0 and d1; requests that d0 answers at once and d1 after ``slow_s``."""
    cloud.start_device("d0")
    cloud.start_device("d1")
    assert cloud.process.hub is not None
    assert cloud.process.hub.wait_for(["d0", "d1"], 5.0) == []
    return [
        Message("cloud", "d0", "slow", 1, {"sleep_s": 0.0}),
        Message("cloud", "d1", "slow", 1, {"sleep_s": slow_s}),
    ]


def test_a_reply_after_the_deadline_is_absent_and_the_round_ends_at_the_deadline(
    cloud: Cloud,
) -> None:
    msgs = _fast_and_slow(cloud, slow_s=3.0)
    started = time.monotonic()
    replies = cloud.transport.send(msgs, deadline_s=1.0)
    assert [r.src for r in replies] == ["d0"]
    assert time.monotonic() - started < 2.5
    assert cloud.transport.stats()["late"] == 1


def test_a_device_killed_mid_call_is_skipped_after_the_reattach_window(cloud: Cloud) -> None:
    msgs = _fast_and_slow(cloud, slow_s=2.0)
    threading.Timer(0.5, cloud.kill_device, args=("d1",)).start()
    started = time.monotonic()
    replies = cloud.transport.send(msgs)
    assert [r.src for r in replies] == ["d0"]
    assert time.monotonic() - started < SETTINGS.reattach_s + 3.0
    assert cloud.transport.nodes("device") == ["d0"]


def test_a_call_is_sent_again_when_its_node_comes_back_in_time(cloud: Cloud) -> None:
    cloud.start_device("d1")
    assert cloud.process.hub is not None
    cloud.process.hub.wait_for(["d1"], 5.0)

    def restart() -> None:
        cloud.kill_device("d1")
        cloud.start_device("d1")

    threading.Timer(0.3, restart).start()
    replies = cloud.transport.send([Message("cloud", "d1", "slow", 1, {"sleep_s": 1.0})])
    assert [r.src for r in replies] == ["d1"]


def test_a_device_whose_parent_is_gone_fails_over_to_the_next(cloud: Cloud) -> None:
    dead = "localhost:1"  # nothing listens on port 1
    cloud.start_device("d2", parents=[dead, cloud.address])
    assert cloud.process.hub is not None
    assert cloud.process.hub.wait_for(["d2"], 10.0) == []
    attachment = cloud.devices["d2"].attachments[0]
    deadline = time.monotonic() + 5.0  # the hub may see the stream before the device notes it
    while attachment.connected_to is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert attachment.connected_to == cloud.address

"""The fault proxy on loopback: bytes pass unchanged, a cut drops and refuses connections,
a delay holds every chunk, and TLS through a proxy still checks who answers (the child
insists on its parent's node id, not on the proxy's address)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedge.core.message import Message
from fedge.core.node import NodeApp, NodeContext
from fedge.deploy.faults import LinkProxies
from fedge.runtime.grpc.node import NodeProcess
from fedge.runtime.grpc.settings import GrpcSettings
from fedge.runtime.grpc.tls import make_certs, names_node

pytestmark = pytest.mark.grpc

SETTINGS = GrpcSettings(
    call_timeout_s=20.0,
    connect_timeout_s=3.0,
    retry_initial_s=0.05,
    retry_max_s=0.2,
    reattach_s=5.0,
)


@pytest.fixture
def echo() -> Iterator[int]:
    """A plain TCP echo server on loopback (threads); yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(timeout=2)
    server.close()


@pytest.fixture
def proxies() -> Iterator[LinkProxies]:
    links = LinkProxies()
    yield links
    links.close()


def _dial(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _round_trip(conn: socket.socket, data: bytes) -> bytes:
    conn.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = conn.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_bytes_pass_unchanged_and_a_cut_drops_and_refuses_until_restored(
    echo: int, proxies: LinkProxies
) -> None:
    address = proxies.add("a->b", f"127.0.0.1:{echo}")
    data = bytes(range(256)) * 1000
    conn = _dial(address)
    assert _round_trip(conn, data) == data
    assert proxies.connections("a->b") == 1
    proxies.cut("a->b")
    assert _closed_or_reset(conn)
    refused = _dial(address)  # accepted by the kernel, then closed at once by the proxy
    assert _closed_or_reset(refused)
    proxies.restore("a->b")
    again = _dial(address)
    assert _round_trip(again, b"back") == b"back"
    for c in (conn, refused, again):
        c.close()


def _closed_or_reset(conn: socket.socket) -> bool:
    try:
        conn.settimeout(5)
        return conn.recv(10) == b""
    except ConnectionResetError:
        return True


def test_a_delay_holds_every_chunk_both_ways(echo: int, proxies: LinkProxies) -> None:
    address = proxies.add("slow", f"127.0.0.1:{echo}")
    conn = _dial(address)
    assert _round_trip(conn, b"warm") == b"warm"
    proxies.delay("slow", 0.4)
    start = time.monotonic()
    assert _round_trip(conn, b"x" * 100) == b"x" * 100
    took_s = time.monotonic() - start
    assert 0.8 <= took_s < 3.0  # 0.4 s up and 0.4 s back
    proxies.restore("slow")
    start = time.monotonic()
    assert _round_trip(conn, b"fast") == b"fast"
    assert time.monotonic() - start < 0.3
    conn.close()


def test_a_flap_cuts_and_restores_on_schedule(echo: int, proxies: LinkProxies) -> None:
    address = proxies.add("f", f"127.0.0.1:{echo}")
    conn = _dial(address)
    flapping = proxies.flap("f", 0.2, 1.0)
    assert _closed_or_reset(conn)  # the first cut
    flapping.result(timeout=10)
    again = _dial(address)
    assert _round_trip(again, b"ok") == b"ok"
    conn.close()
    again.close()


def _hello(message: Message, ctx: NodeContext) -> Message:
    return message.reply("out", {"who": ctx.node_id})


def _authorize(node_id: str, tier: str) -> str | None:
    return None


def test_tls_through_a_proxy_checks_the_parent_s_node_id(
    tmp_path: Path, proxies: LinkProxies
) -> None:
    certs = make_certs(tmp_path / "certs", ["cloud", "d0", "d1"])
    assert names_node(certs, "cloud") and not names_node(certs, "nobody")
    cloud = NodeProcess(SETTINGS, str(certs), seed=1)
    transport = cloud.serve("cloud", "127.0.0.1:0", _authorize)
    address = proxies.add("d->cloud", f"127.0.0.1:{cloud.port}")
    good = NodeProcess(SETTINGS, str(certs), seed=1)
    fooled = NodeProcess(SETTINGS, str(certs), seed=1)
    try:
        good.attach(NodeApp("d0", "device", {"hi": _hello}), [address], names={address: "cloud"})
        # d1 expects to reach d0 at that address: the cloud's certificate does not name d0
        fooled.attach(NodeApp("d1", "device", {"hi": _hello}), [address], names={address: "d0"})
        assert cloud.hub is not None
        assert cloud.hub.wait_for(["d0"], 10.0) == []
        replies = transport.send([Message("cloud", "d0", "hi", 1, {})], 10.0)
        assert [r.payload["who"] for r in replies] == ["d0"]
        assert cloud.hub.wait_for(["d1"], 2.0) == ["d1"]
    finally:
        for process in (good, fooled, cloud):
            process.close()


def test_a_round_during_a_partition_waits_for_a_child_to_come_back(
    tmp_path: Path, proxies: LinkProxies
) -> None:
    cloud = NodeProcess(SETTINGS, None, seed=1)
    transport = cloud.serve("cloud", "127.0.0.1:0", _authorize)
    transport.rejoin_s = SETTINGS.reattach_s
    address = proxies.add("d->cloud", f"127.0.0.1:{cloud.port}")
    device = NodeProcess(SETTINGS, None, seed=1)
    try:
        device.attach(NodeApp("d0", "device", {"hi": _hello}), [address])
        assert cloud.hub is not None and cloud.hub.wait_for(["d0"], 10.0) == []
        proxies.cut("d->cloud")
        deadline = time.monotonic() + 5
        while transport._hub.attached("device") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cloud.hub.attached("device") == []
        timer = threading.Timer(1.0, proxies.restore, args=("d->cloud",))
        timer.start()
        start = time.monotonic()
        assert transport.nodes("device") == ["d0"]  # waited for it, not an empty round
        assert 0.8 <= time.monotonic() - start < SETTINGS.reattach_s
        assert transport.nodes("edge") == []  # no edge ever attached: no wait
        timer.join()
    finally:
        device.close()
        cloud.close()


def test_link_names_and_delays_are_checked(proxies: LinkProxies) -> None:
    with pytest.raises(Exception, match="no link 'x'"):
        proxies.cut("x")
    proxies.add("y", "127.0.0.1:9")
    with pytest.raises(Exception, match="latency_s and rate_bytes_s must be >= 0"):
        proxies.delay("y", -1.0)

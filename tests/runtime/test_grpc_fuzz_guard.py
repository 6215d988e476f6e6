"""What a gRPC node refuses before acting on a message: another run, a replay, a model that
does not fit, and more than the stream may buffer. Pure checks first, then a hub and a child
on loopback (insecure: identity is tested elsewhere) with a hand-driven peer on the other
side, so every refusal is seen with its exact text."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator

import grpc
import pytest
import torch

from deploy_helpers import FAST_GRPC
from fedge.core.message import _PREFIX, MAGIC, VERSION, Message, MessageError
from fedge.core.node import NodeApp, NodeContext
from fedge.core.update import Update
from fedge.runtime.grpc import wire
from fedge.runtime.grpc.guard import ModelCheck, ReplayGuard, RunIdentity
from fedge.runtime.grpc.node import NodeProcess
from fedge.runtime.grpc.transport import GrpcTransport

pytestmark = pytest.mark.grpc

SETTINGS = FAST_GRPC.model_copy(
    update={"max_message_bytes": 1 << 16, "call_timeout_s": 10.0, "reattach_s": 0.5}
)
TEMPLATE = {
    "w": torch.zeros(2, 2),
    "b": torch.zeros(2),
    "steps": torch.zeros((), dtype=torch.int64),
}


def _with(state: dict[str, torch.Tensor], kind: str = "out") -> Message:
    return Message("d0", "cloud", kind, 1, {"update": Update(state)})


# -- pure checks ------------------------------------------------------------------------


def test_run_identity_refuses_only_a_known_other_run() -> None:
    run = RunIdentity()
    assert run.refusal("r2") is None  # not known yet: anything goes, nothing is learned
    run.learn("r1")
    run.learn("r2")  # only the first is learned
    assert run.value == "r1"
    assert run.refusal("r1") is None and run.refusal("") is None
    assert run.refusal("r2") == "run id 'r2', this node serves run 'r1'"


def test_replay_guard_refuses_a_second_request_and_stays_bounded() -> None:
    guard = ReplayGuard(window=3)
    assert [guard.refusal(i) for i in (5, 6)] == [None, None]
    assert guard.refusal(5) == "already asked on this stream (a replay)"
    for i in (7, 8, 9):
        assert guard.refusal(i) is None
    assert len(guard._seen) == 3  # 5 and 6 evicted: they are below the floor now
    assert guard.refusal(6) == "already asked on this stream (a replay)"
    assert guard.refusal(100) is None


def test_model_check_names_the_key_and_both_shapes() -> None:
    check = ModelCheck(TEMPLATE)
    assert check.refusal(_with({k: v.clone() for k, v in TEMPLATE.items()})) is None
    assert check.refusal(_with({"w": torch.ones(2, 2)})) is None  # a part of the model
    assert check.refusal(_with({"masked": torch.zeros(7, dtype=torch.uint8)})) is None
    assert check.refusal(_with({"w": torch.zeros(3)})) == (
        "out from d0: update: parameter 'w' has shape [3], this node's model has [2, 2]"
    )
    assert check.refusal(_with({"w2": torch.zeros(2, 2)})) == (
        "out from d0: update: unknown parameter 'w2' (this node's model has w, b, steps)"
    )
    assert check.refusal(_with({"b": torch.zeros(2, dtype=torch.float64)})) == (
        "out from d0: update: parameter 'b' has dtype torch.float64, "
        "this node's model has torch.float32"
    )
    listed = Message("d0", "cloud", "out", 1, {"updates": [Update({"b": torch.zeros(5)})]})
    assert check.refusal(listed) == (
        "out from d0: updates[0]: parameter 'b' has shape [5], this node's model has [2]"
    )


def test_nan_and_inf_are_well_formed_and_pass_the_check() -> None:
    state = {"w": torch.full((2, 2), float("nan")), "b": torch.tensor([float("inf"), 0.0])}
    assert ModelCheck(TEMPLATE).refusal(_with(state)) is None


def _raw(header: object, body: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return _PREFIX.pack(MAGIC, VERSION, len(text)) + text + body


def _tensor_header(shape: list[int]) -> dict[str, object]:
    ref = {"__tensor__": 0, "dtype": "float32", "shape": shape}
    return {"src": "a", "dst": "b", "kind": "k", "round": 0, "payload": {"__map__": [["x", ref]]}}


def test_declared_sizes_are_checked_before_anything_is_allocated() -> None:
    with pytest.raises(MessageError, match="shorter than its tensors"):
        Message.decode(_raw(_tensor_header([1 << 40, 1 << 40]), bytes(64)))
    with pytest.raises(MessageError, match="bad tensor reference"):
        Message.decode(_raw(_tensor_header([-4, 4])))
    with pytest.raises(MessageError, match="nested too deeply"):
        deep = b"[" * 100_000 + b"]" * 100_000
        Message.decode(_PREFIX.pack(MAGIC, VERSION, len(deep)) + deep)


def test_a_stream_buffers_at_most_its_limit_of_unfinished_messages() -> None:
    joined = wire.Reassembler(max_message_bytes=1000, max_open_calls=4, max_buffered_bytes=2500)
    piece = bytes(900)
    for call in (1, 2):
        assert joined.add(wire.Frame(kind=wire.Frame.CHUNK, call_id=call, data=piece)) is None
    with pytest.raises(wire.WireError, match="would hold more than 2500 bytes"):
        joined.add(wire.Frame(kind=wire.Frame.CHUNK, call_id=3, data=piece))
    assert joined.buffered_bytes == 1800 and sorted(joined._open) == [1, 2]
    for call in (4, 5):
        joined.add(wire.Frame(kind=wire.Frame.CHUNK, call_id=call, data=b"x"))
    with pytest.raises(wire.WireError, match="more than 4 messages in flight"):
        joined.add(wire.Frame(kind=wire.Frame.CHUNK, call_id=6, data=b"x"))
    joined.forget(1)
    assert joined.buffered_bytes == 902


# -- a hub with a hand-driven child -----------------------------------------------------


class RawChild:
    """A child stream driven frame by frame from the test (what a hostile node could send)."""

    def __init__(self, address: str, hello: wire.Frame) -> None:
        self.channel = grpc.insecure_channel(address)
        self.outgoing: queue.Queue[wire.Frame | None] = queue.Queue()
        self.incoming: queue.Queue[wire.Frame] = queue.Queue()
        self.outgoing.put(hello)
        stream = self.channel.stream_stream(
            wire.SERVICE_METHOD,
            request_serializer=wire.Frame.SerializeToString,
            response_deserializer=wire.Frame.FromString,
        )(iter(self.outgoing.get, None))
        self.stream = stream
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for frame in self.stream:
                self.incoming.put(frame)
        except grpc.RpcError as exc:
            self.incoming.put(wire.error(0, f"{exc.code().name}: {exc.details()}"))

    def send(self, frames: list[wire.Frame]) -> None:
        for frame in frames:
            self.outgoing.put(frame)

    def request(self) -> tuple[int, list[wire.Frame], Message]:
        """The next request the hub sent: its call id, frames and message."""
        frames = [self.incoming.get(timeout=10)]
        while not frames[-1].last:
            frames.append(self.incoming.get(timeout=10))
        return frames[0].call_id, frames, Message.decode(b"".join(f.data for f in frames))

    def close(self) -> None:
        self.outgoing.put(None)
        self.channel.close()


@pytest.fixture
def hub() -> Iterator[NodeProcess]:
    process = NodeProcess(SETTINGS, None, seed=1)
    process.serve("cloud", "127.0.0.1:0", lambda node, tier: None)
    assert process.hub is not None
    process.hub.run_id.value = "run-A"
    process.hub.check = ModelCheck(TEMPLATE)
    yield process
    process.close()


def _attached(process: NodeProcess, hello: wire.Frame) -> RawChild:
    child = RawChild(f"127.0.0.1:{process.port}", hello)
    assert process.hub is not None and process.hub.wait_for([hello.hello.node_id], 5.0) == []
    return child


def _ask(process: NodeProcess) -> object:
    assert process.hub is not None
    return process.hub.call(Message("cloud", "d0", "train", 1, {"x": 1}))


def _reply(call_id: int, message: Message, run: str = "run-A") -> list[wire.Frame]:
    return wire.message_frames(call_id, message, SETTINGS.chunk_bytes, run)


def test_a_hello_of_another_run_is_refused_before_it_replaces_anyone(hub: NodeProcess) -> None:
    child = _attached(hub, wire.hello("d0", "device"))
    stranger = RawChild(f"127.0.0.1:{hub.port}", wire.hello("d0", "device", run="run-B"))
    refusal = stranger.incoming.get(timeout=10).data.decode()
    assert refusal == "FAILED_PRECONDITION: run id 'run-B', this node serves run 'run-A'"
    assert hub.hub is not None and hub.hub.attached("device") == ["d0"]
    call = _ask(hub)
    call_id, _, request = child.request()  # the first d0 is still the one served
    assert child.incoming.empty()
    child.send(_reply(call_id, request.reply("out", {"y": 2})))
    assert call.result(timeout=10).payload == {"y": 2}  # type: ignore[attr-defined]
    stranger.close()
    child.close()


def test_a_reply_of_another_run_fails_its_call(
    hub: NodeProcess, caplog: pytest.LogCaptureFixture
) -> None:
    child = _attached(hub, wire.hello("d0", "device"))
    call = _ask(hub)
    call_id, frames, request = child.request()
    assert {f.run for f in frames} == {"run-A"}  # the hub stamps its run on every request
    with caplog.at_level(logging.WARNING, logger="fedge.grpc"):
        child.send(_reply(call_id, request.reply("out", {}), run="run-B"))
        error = child.incoming.get(timeout=10)
    reason = f"call {call_id}: run id 'run-B', this node serves run 'run-A'"
    assert error.kind == wire.Frame.ERROR and error.data.decode() == reason
    with pytest.raises(wire.WireError, match="run id 'run-B'"):
        call.result(timeout=10)  # type: ignore[attr-defined]
    assert f"rejected a message from d0: {reason}" in caplog.text
    child.close()


def test_a_replayed_reply_is_refused_and_not_applied(hub: NodeProcess) -> None:
    child = _attached(hub, wire.hello("d0", "device"))
    call = _ask(hub)
    call_id, _, request = child.request()
    child.send(_reply(call_id, request.reply("out", {"y": 1})))
    assert call.result(timeout=10).payload == {"y": 1}  # type: ignore[attr-defined]
    second = _ask(hub)
    next_id, _, next_request = child.request()
    child.send(_reply(call_id, request.reply("out", {"y": 666})))  # replay of the first
    error = child.incoming.get(timeout=10)
    assert error.data.decode() == (
        f"call {call_id}: not outstanding (answered already or never asked)"
    )
    child.send(_reply(next_id, next_request.reply("out", {"y": 2})))
    assert second.result(timeout=10).payload == {"y": 2}  # type: ignore[attr-defined]
    child.send(_reply(99, request.reply("out", {})))  # never asked
    assert child.incoming.get(timeout=10).data.decode() == (
        "call 99: not outstanding (answered already or never asked)"
    )
    assert hub.hub is not None and hub.hub.counters["rejected"] == 2
    child.close()


def test_a_model_that_does_not_fit_fails_the_call_and_its_reply_is_absent(
    hub: NodeProcess,
) -> None:
    child = _attached(hub, wire.hello("d0", "device"))
    assert hub.hub is not None
    replies: list[list[Message]] = []
    transport = GrpcTransport(hub.hub, "cloud")
    done = threading.Thread(
        target=lambda: replies.append(
            transport.send([Message("cloud", "d0", "train", 1, {})], deadline_s=10.0)
        )
    )
    done.start()
    call_id, _, request = child.request()
    bad = request.reply("out", {"update": Update({"w": torch.zeros(4), "b": torch.zeros(2)})})
    child.send(_reply(call_id, bad))
    assert child.incoming.get(timeout=10).data.decode() == (
        f"call {call_id}: out from d0: update: parameter 'w' has shape [4], "
        "this node's model has [2, 2]"
    )
    done.join(timeout=15)
    assert replies == [[]]  # absent, as a child that failed
    assert transport.stats()["dropped"] == 1 and transport.stats()["rejected"] == 1
    child.close()


# -- a child refuses requests ---------------------------------------------------------


def _echo(message: Message, ctx: NodeContext) -> Message:
    ctx.state["handled"] = ctx.state.get("handled", 0) + 1
    return message.reply("out", {"n": ctx.state["handled"]})


@pytest.fixture
def device(hub: NodeProcess) -> Iterator[tuple[NodeProcess, NodeApp]]:
    process = NodeProcess(SETTINGS, None, seed=1)
    process.check_models(TEMPLATE)
    app = NodeApp("d0", "device", {"train": _echo})
    process.attach(app, [f"127.0.0.1:{hub.port}"])
    assert hub.hub is not None and hub.hub.wait_for(["d0"], 5.0) == []
    yield process, app
    process.close()


def _model(state: dict[str, torch.Tensor]) -> Message:
    return Message("cloud", "d0", "train", 1, {"model": Update(state)})


def test_a_child_learns_the_run_and_refuses_requests_of_another(
    hub: NodeProcess, device: tuple[NodeProcess, NodeApp]
) -> None:
    assert hub.hub is not None
    process, app = device
    assert hub.hub.call(Message("cloud", "d0", "train")).result(timeout=10).payload == {"n": 1}
    assert process.run_id.value == "run-A"
    hub.hub.run_id.value = "run-B"  # as a parent of another run would
    with pytest.raises(Exception, match="d0: call 2: run id 'run-B', this node serves run 'run-A'"):
        hub.hub.call(Message("cloud", "d0", "train")).result(timeout=10)
    assert app.state["handled"] == 1


def test_a_child_refuses_a_model_that_does_not_fit_before_its_handler(
    hub: NodeProcess, device: tuple[NodeProcess, NodeApp]
) -> None:
    assert hub.hub is not None
    _, app = device
    wrong = _model({"w": torch.zeros(2, 3)})
    with pytest.raises(
        Exception, match=r"parameter 'w' has shape \[2, 3\], this node's model has \[2, 2\]"
    ):
        hub.hub.call(wrong).result(timeout=10)
    assert "handled" not in app.state
    right = _model({"w": torch.ones(2, 2), "b": torch.ones(2)})
    assert hub.hub.call(right).result(timeout=10).payload == {"n": 1}


def test_a_child_refuses_a_replayed_request(
    hub: NodeProcess, device: tuple[NodeProcess, NodeApp], caplog: pytest.LogCaptureFixture
) -> None:
    assert hub.hub is not None
    _, app = device
    assert hub.hub.call(Message("cloud", "d0", "train")).result(timeout=10).payload == {"n": 1}
    child = hub.hub._children["d0"]
    frames = wire.message_frames(1, Message("cloud", "d0", "train"), 4096, "run-A")
    with caplog.at_level(logging.WARNING, logger="fedge.grpc"):
        for frame in frames:  # call 1 again, on the same stream
            hub._loop.loop.call_soon_threadsafe(child.queue.put_nowait, frame)
        assert hub.hub.call(Message("cloud", "d0", "train")).result(timeout=10).payload == {"n": 2}
    assert "d0 failed call 1: call 1: already asked on this stream (a replay)" in caplog.text
    assert app.state["handled"] == 2

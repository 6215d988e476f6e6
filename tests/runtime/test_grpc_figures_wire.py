"""Lazily serialised chunks, encoding a broadcast once, and how figures add up a tree."""

from __future__ import annotations

import pytest
import torch

from fedge.core.message import Message
from fedge.core.update import Update
from fedge.runtime.grpc import fedge_pb2 as pb
from fedge.runtime.grpc import wire
from fedge.runtime.grpc.figures import NodeFigures

pytestmark = pytest.mark.grpc


def _model_message(dst: str, state: dict[str, torch.Tensor]) -> Message:
    return Message("edge0", dst, "train", 4, {"model": Update(state=state), "lr": 0.1})


@pytest.mark.parametrize("chunk", [1024, 1000, 1 << 20])
def test_grpc_figures_outgoing_frames_are_what_protobuf_writes(chunk: int) -> None:
    state = {"w": torch.randn(3000), "b": torch.arange(7), "m": torch.ones(5) > 0}
    message = _model_message("d1", state)
    report = pb.Report(node_id="d1", seq=3, sums={"bytes_up_device_edge": 5.0}, handler_s=0.25)
    out = wire.Outgoing(7, message.encode_parts(), chunk, report=report)
    frames = list(out.frames())
    # the oracle: protobuf's own serialisation of the frames the old path built
    expected = wire.message_frames(7, message, chunk)
    expected[-1].report.CopyFrom(report)
    assert frames == [f.SerializeToString() for f in expected]
    assert out.nbytes == message.nbytes() == len(message.encode())
    without_report = sum(len(f) + wire.GRPC_PREFIX_BYTES for f in frames)
    assert out.wire_bytes + wire.report_wire_bytes(report) == without_report
    joined = wire.Reassembler(1 << 24)
    decoded = [joined.add(pb.Frame.FromString(f)) for f in frames]
    assert decoded[-1] is not None and decoded[-1].encode() == message.encode()


def test_grpc_figures_an_empty_message_is_one_frame() -> None:
    out = wire.Outgoing(2, [b""], 1024)
    assert list(out.frames()) == [f.SerializeToString() for f in wire.chunks(2, b"", 1024)]


def test_grpc_figures_a_broadcast_encodes_each_shared_tensor_once() -> None:
    state = {"w": torch.randn(1000), "b": torch.randn(10)}
    cache: dict[int, bytes] = {}
    parts = [_model_message(f"d{i}", state).encode_parts(cache) for i in range(50)]
    assert len(cache) == 2  # one encoding per tensor, not per child
    assert all(p[1] is parts[0][1] and p[2] is parts[0][2] for p in parts)
    for i, p in enumerate(parts):  # and every message is still its own, exactly
        assert b"".join(p) == _model_message(f"d{i}", state).encode()


def test_grpc_figures_frames_are_made_one_at_a_time() -> None:
    data = bytes(range(256)) * 64
    out = wire.Outgoing(1, [data], 1024)
    frames = out.frames()
    first = next(frames)
    assert len(first) < 1100  # a generator: nothing beyond the first chunk exists yet
    assert len(list(frames)) == out.count - 1 == 15


def test_grpc_figures_reports_add_up_sums_and_keep_the_slowest() -> None:
    cloud = NodeFigures("cloud", "cloud", None)
    edge = NodeFigures("edge0", "edge", None)
    for dev, seconds in (("d0", 1.0), ("d1", 3.0)):
        device = NodeFigures(dev, "device", None)
        device.sent(Message(dev, "edge0", "r", 1), 100, 120, "up_device")
        device.worked(Message("edge0", dev, "train", 1), seconds)
        edge.merge(device.report())
        edge.merge(device.report())  # a newer report replaces, never adds
    stale = pb.Report(node_id="d0", seq=0, sums={"wire_bytes_up_device": 1e9})
    edge.merge(stale)  # an older one is ignored
    cloud.merge(edge.report())
    row = cloud.snapshot()
    assert row["wire_bytes_up_device"] == 240 and row["wire_overhead_bytes_up_device"] == 40
    assert row["latency_measured_compute_device_s"] == 3.0
    assert row["wire_overhead_bytes"] == 40


def test_grpc_figures_parse_reads_what_protobuf_reads() -> None:
    report = pb.Report(node_id="d", seq=1, maxima={"x@1": 2.0})
    frames = [
        *wire.Outgoing(300, [bytes(range(256)) * 9], 1024, report=report).frames(),
        wire.hello("d0", "device").SerializeToString(),
        wire.error(5, "boom").SerializeToString(),
        pb.Frame(kind=pb.Frame.CHUNK, call_id=1, last=True).SerializeToString(),  # no data
    ]
    for raw in frames:
        mine, oracle = wire.parse(raw), pb.Frame.FromString(raw)
        assert bytes(mine.data) == oracle.data
        for name in ("kind", "call_id", "seq", "last", "hello", "report"):
            assert getattr(mine, name) == getattr(oracle, name)
        assert mine.HasField("report") == oracle.HasField("report")
    from google.protobuf.message import DecodeError

    for bad in (b"\x2a\x05abc", b"\x08", b"\xff\xff\xff"):  # truncated or malformed
        with pytest.raises(DecodeError):
            pb.Frame.FromString(bad)
        with pytest.raises(DecodeError):
            wire.parse(bad)

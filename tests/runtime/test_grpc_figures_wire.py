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


@pytest.mark.parametrize(
    ("chunk", "run", "kind"),
    [
        (1024, "", pb.Frame.CHUNK),
        (1000, "20261130-tiny-ab12", pb.Frame.CHUNK),
        (1 << 20, "", pb.Frame.CHUNK),
        (1000, "r" * 200, pb.Frame.PEER_REPLY),
        (1024, "run-1", pb.Frame.PEER_REQUEST),
    ],
)
def test_grpc_figures_outgoing_frames_are_what_protobuf_writes(
    chunk: int, run: str, kind: pb.Frame.Kind
) -> None:
    state = {"w": torch.randn(3000), "b": torch.arange(7), "m": torch.ones(5) > 0}
    message = _model_message("d1", state)
    report = pb.Report(node_id="d1", seq=3, sums={"bytes_up_device_edge": 5.0}, handler_s=0.25)
    out = wire.Outgoing(7, message.encode_parts(), chunk, report=report, run=run, kind=kind)
    frames = list(out.frames())
    # the oracle: protobuf's own serialisation of the frames the old path built
    expected = wire.message_frames(7, message, chunk, run, kind)
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
    edges = [NodeFigures("edge0", "edge", None), NodeFigures("edge1", "edge", None)]
    device = NodeFigures("d0", "device", None)
    other = NodeFigures("d1", "device", None)
    for round_index, (edge, seconds) in enumerate(zip(edges, (1.0, 3.0), strict=True), 1):
        # d0 answers edge0 in round 1, then moves to edge1 for round 2
        device.sent(Message("d0", edge.node_id, "r", round_index), 100, 120, "up_device")
        device.worked(Message(edge.node_id, "d0", "train", round_index), seconds)
        edge.merge(device.report())
        edge.merge(device.report())  # nothing new since: adds nothing
    other.worked(Message("edge0", "d1", "train", 2), 2.0)
    edges[0].merge(other.report())
    for edge in edges:
        cloud.merge(edge.report())
    row = cloud.snapshot()
    # by hand: two replies of 120 wire bytes (20 of them framing), counted once each
    assert row["wire_bytes_up_device"] == 240 and row["wire_overhead_bytes_up_device"] == 40
    assert row["wire_overhead_bytes"] == 40
    # slowest device per round, summed over rounds: 1.0 (round 1) + max(3.0, 2.0)
    assert row["latency_measured_compute_device_s"] == 4.0
    again = edges[0].report()
    assert dict(again.sums) == {} and dict(again.maxima) == {}


def test_grpc_figures_parse_reads_what_protobuf_reads() -> None:
    report = pb.Report(node_id="d", seq=1, maxima={"x@1": 2.0})
    frames = [
        *wire.Outgoing(300, [bytes(range(256)) * 9], 1024, report=report).frames(),
        wire.hello("d0", "device").SerializeToString(),
        wire.error(5, "boom").SerializeToString(),
        pb.Frame(kind=pb.Frame.CHUNK, call_id=1, last=True).SerializeToString(),  # no data
    ]
    frames += wire.Outgoing(9, [b"x" * 3000], 1024, run="run-7", kind=pb.Frame.PEER_REPLY).frames()
    for raw in frames:
        mine, oracle = wire.parse(raw), pb.Frame.FromString(raw)
        assert bytes(mine.data) == oracle.data
        for name in ("kind", "call_id", "seq", "last", "hello", "report", "run"):
            assert getattr(mine, name) == getattr(oracle, name)
        assert mine.HasField("report") == oracle.HasField("report")
    from google.protobuf.message import DecodeError

    for bad in (b"\x2a\x05abc", b"\x08", b"\xff\xff\xff"):  # truncated or malformed
        with pytest.raises(DecodeError):
            pb.Frame.FromString(bad)
        with pytest.raises(DecodeError):
            wire.parse(bad)

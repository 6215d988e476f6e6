"""The checked-in protobuf module is what fedge.proto compiles to, and chunks reassemble."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedge.core.message import Message
from fedge.runtime.grpc import fedge_pb2, wire

pytestmark = pytest.mark.grpc
PROTO_DIR = Path(wire.__file__).parent


def test_the_generated_module_matches_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools comes with the dev extra")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={tmp_path}"]
    subprocess.run([*cmd, str(PROTO_DIR / "fedge.proto")], check=True)
    fresh = (tmp_path / "fedge_pb2.py").read_text()
    assert fresh == (PROTO_DIR / "fedge_pb2.py").read_text(), "regenerate fedge_pb2.py"
    assert fedge_pb2.DESCRIPTOR.services_by_name["Node"].methods_by_name["Attach"]


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 50_000])
def test_any_message_survives_chunking(size: int) -> None:
    message = Message("a", "b", "k", 3, {"blob": bytes(size).hex()[:size]})
    frames = wire.message_frames(9, message, 4096)
    assert all(len(f.data) <= 4096 for f in frames) and frames[-1].last
    assert [f.seq for f in frames] == list(range(len(frames)))
    joined = wire.Reassembler(1 << 20)
    out = [joined.add(f) for f in frames]
    assert out[:-1] == [None] * (len(frames) - 1)
    assert out[-1] == message


def test_a_message_over_the_limit_is_refused_and_forgotten() -> None:
    frames = wire.message_frames(1, Message("a", "b", "k", 0, {"x": "y" * 10_000}), 1024)
    joined = wire.Reassembler(max_message_bytes=4096)
    with pytest.raises(wire.WireError, match="max_message_bytes"):
        for frame in frames:
            joined.add(frame)
    assert joined._open == {}

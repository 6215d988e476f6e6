"""``[grpc]``: the settings of a gRPC deployment (importable without the grpc extra)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from fedge.core.settings import Section

FRAME_OVERHEAD_BYTES = 64 << 10
"""Room for a frame's envelope on top of its chunk in gRPC's own message limit."""


class GrpcSettings(Section):
    """The gRPC deployment (``[grpc]``): addresses, TLS, message limits, deadlines, retries."""

    section: ClassVar[str] = "grpc"

    host: str = "127.0.0.1"
    base_port: int = Field(
        0, ge=0, le=65535, description="first port for deploy-local; 0 picks free ports"
    )
    certs: str | None = Field(None, description="directory written by `fedge certs` (TLS)")
    chunk_bytes: int = Field(1 << 20, ge=1024, description="largest chunk of a model on the wire")
    max_message_bytes: int = Field(256 << 20, ge=1024, description="largest message accepted")
    call_timeout_s: float = Field(600.0, gt=0, description="longest wait for any reply")
    connect_timeout_s: float = Field(60.0, gt=0, description="wait for nodes to attach")
    retry_initial_s: float = Field(0.2, gt=0, description="first reconnection backoff")
    retry_max_s: float = Field(5.0, gt=0, description="longest reconnection backoff")
    heartbeat_s: float = Field(2.0, gt=0, description="keepalive ping interval")
    failover_s: float = Field(
        5.0, gt=0, description="a device cut off from its edge this long moves to a neighbour"
    )
    reattach_s: float = Field(
        20.0, ge=0, description="how long a call waits for its node to come back"
    )
    dormant_after_s: float = Field(
        10.0, ge=0, description="an edge cut off from the cloud this long trains alone (0: never)"
    )
    checkpoint_dir: str | None = Field(None, description="where nodes write their checkpoints")

    def options(self) -> list[tuple[str, int]]:
        """gRPC channel / server options: one frame at most, keepalive pings."""
        frame = self.chunk_bytes + FRAME_OVERHEAD_BYTES
        ping_ms = int(self.heartbeat_s * 1000)
        return [
            ("grpc.max_send_message_length", frame),
            ("grpc.max_receive_message_length", frame),
            ("grpc.keepalive_time_ms", ping_ms),
            ("grpc.keepalive_timeout_ms", max(ping_ms, 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", max(ping_ms // 2, 100)),
        ]

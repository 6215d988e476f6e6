"""What a gRPC node needs to know about limits, deadlines and retries (plain data)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
FRAME_OVERHEAD_BYTES = 64 << 10
"""Room for a frame's envelope on top of its chunk in gRPC's own message limit."""


@dataclass(frozen=True)
class GrpcSettings:
    chunk_bytes: int = 1 << 20
    max_message_bytes: int = 256 << 20
    call_timeout_s: float = 600.0
    connect_timeout_s: float = 60.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    heartbeat_s: float = 2.0
    failover_s: float = 5.0
    """A child that cannot reach its parent this long moves to the next one it knows."""
    reattach_s: float = 20.0
    """How long a call waits for its node to attach again after its stream broke."""
    dormant_after_s: float = 10.0
    """An edge cut off from its parent this long trains on its own (0: never)."""

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


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` is set, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class LoopThread:
    """An asyncio event loop in a daemon thread; blocking code hands it coroutines."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)

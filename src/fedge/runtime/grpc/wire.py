"""Frames on the wire: a fedge message cut into chunks, and put back together with limits.

Pure code over the generated protobuf classes: no sockets, so every rule here (order of
chunks, the size limit, what a malformed message does) is testable without a network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from fedge.core.errors import FedgeError
from fedge.core.message import Message, MessageError
from fedge.runtime.grpc import fedge_pb2 as pb

PROTOCOL_VERSION = 1
SERVICE_METHOD = "/fedge.v1.Node/Attach"
Frame = pb.Frame


class WireError(FedgeError):
    """A frame or message that breaks the protocol (out of order, too large, malformed)."""


def chunks(
    call_id: int,
    data: bytes,
    chunk_bytes: int,
    run: str = "",
    kind: pb.Frame.Kind = pb.Frame.CHUNK,
) -> Iterator[pb.Frame]:
    """``data`` as frames of ``kind`` (CHUNK, or PEER_REQUEST / PEER_REPLY for the calls a
    child starts) of at most ``chunk_bytes``; an empty message is one frame. ``run`` is the
    id of the run the message belongs to (see ``guard``)."""
    view = memoryview(data)
    count = max(1, -(-len(data) // chunk_bytes))
    for seq in range(count):
        piece = bytes(view[seq * chunk_bytes : (seq + 1) * chunk_bytes])
        yield pb.Frame(
            kind=kind, call_id=call_id, seq=seq, last=seq == count - 1, data=piece, run=run
        )


def message_frames(
    call_id: int,
    message: Message,
    chunk_bytes: int,
    run: str = "",
    kind: pb.Frame.Kind = pb.Frame.CHUNK,
) -> list[pb.Frame]:
    return list(chunks(call_id, message.encode(), chunk_bytes, run, kind))


def hello(node_id: str, tier: str, home: str = "", run: str = "") -> pb.Frame:
    info = pb.Hello(node_id=node_id, tier=tier, protocol=PROTOCOL_VERSION, home=home, run=run)
    return pb.Frame(kind=pb.Frame.HELLO, hello=info)


def error(call_id: int, reason: str, kind: pb.Frame.Kind = pb.Frame.ERROR) -> pb.Frame:
    """The reason call ``call_id`` failed (PEER_ERROR: a call the child started)."""
    return pb.Frame(kind=kind, call_id=call_id, data=reason.encode()[:4096])


@dataclass
class _Partial:
    pieces: list[bytes] = field(default_factory=list)
    nbytes: int = 0


@dataclass
class Reassembler:
    """Collects the chunks of each call; a message over ``max_message_bytes`` is refused.

    ``add`` returns the decoded message when a call's last chunk arrives, None before.
    A violation raises WireError and forgets the call, so the stream can go on. What one
    peer can make it hold is bounded: at most ``max_open_calls`` unfinished messages and
    ``max_buffered_bytes`` (default: twice ``max_message_bytes``) of their chunks together.
    """

    max_message_bytes: int
    max_open_calls: int = 64
    max_buffered_bytes: int = 0
    _open: dict[int, _Partial] = field(default_factory=dict)
    _buffered: int = 0

    def __post_init__(self) -> None:
        if self.max_buffered_bytes <= 0:
            self.max_buffered_bytes = 2 * self.max_message_bytes

    @property
    def buffered_bytes(self) -> int:
        """Bytes of unfinished messages held now."""
        return self._buffered

    def add(self, frame: pb.Frame) -> Message | None:
        partial = self._open.get(frame.call_id)
        if partial is None:
            if len(self._open) >= self.max_open_calls:
                raise WireError(f"more than {self.max_open_calls} messages in flight")
            partial = self._open[frame.call_id] = _Partial()
        if frame.seq != len(partial.pieces):
            self.forget(frame.call_id)
            raise WireError(
                f"call {frame.call_id}: chunk {frame.seq} out of order "
                f"(expected {len(partial.pieces)})"
            )
        if partial.nbytes + len(frame.data) > self.max_message_bytes:
            self.forget(frame.call_id)
            raise WireError(
                f"call {frame.call_id}: message exceeds max_message_bytes "
                f"= {self.max_message_bytes}"
            )
        if self._buffered + len(frame.data) > self.max_buffered_bytes:
            self.forget(frame.call_id)
            raise WireError(
                f"call {frame.call_id}: unfinished messages would hold more than "
                f"{self.max_buffered_bytes} bytes"
            )
        partial.nbytes += len(frame.data)
        self._buffered += len(frame.data)
        partial.pieces.append(frame.data)
        if not frame.last:
            return None
        self.forget(frame.call_id)
        try:
            return Message.decode(b"".join(partial.pieces))
        except MessageError as exc:
            raise WireError(f"call {frame.call_id}: {exc}") from exc

    def forget(self, call_id: int) -> None:
        partial = self._open.pop(call_id, None)
        if partial is not None:
            self._buffered -= partial.nbytes

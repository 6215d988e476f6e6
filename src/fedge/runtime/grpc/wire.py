"""Frames on the wire: a fedge message cut into chunks, and put back together with limits.

Pure code over the generated protobuf classes: no sockets, so every rule here (order of
chunks, the size limit, what a malformed message does) is testable without a network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

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


GRPC_PREFIX_BYTES = 5
"""gRPC's length prefix in front of every serialised frame (compression flag, u32 length)."""
_REPORT_TAG = b"\xa2\x01"  # Frame.report: field 20, length-delimited
_RUN_TAG = b"\xc2\x02"  # Frame.run: field 40, length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _chunk_header(call_id: int, seq: int, last: bool, size: int, kind: int) -> bytes:
    """A chunk frame's fields before its data, as protobuf writes them (defaults left out)."""
    head = b"\x08" + _varint(kind)  # kind: CHUNK, PEER_REQUEST or PEER_REPLY, never 0
    if call_id:
        head += b"\x10" + _varint(call_id)
    if seq:
        head += b"\x18" + _varint(seq)
    if last:
        head += b"\x20\x01"
    if size:
        head += b"\x2a" + _varint(size)
    return head


class Outgoing:
    """One message on its way out: CHUNK frames, serialised one at a time from the message's
    encoded parts, so the stream holds one chunk at a time and a broadcast's messages share
    the tensors' bytes (``Message.encode_parts`` with a cache) instead of a copy per child.

    ``frames()`` yields each frame already serialised (``serialize`` passes bytes through),
    so a chunk is copied once, from the parts into its frame. ``report`` rides on the last
    frame. ``wire_bytes`` is what the frames take on the stream without the report: their
    serialised size plus gRPC's prefix. ``on_sent`` runs after the last frame was written.
    """

    def __init__(
        self,
        call_id: int,
        parts: Sequence[bytes],
        chunk_bytes: int,
        report: pb.Report | None = None,
        on_sent: Callable[[], None] | None = None,
        run: str = "",
        kind: pb.Frame.Kind = pb.Frame.CHUNK,
    ) -> None:
        self.call_id = call_id
        self.kind = int(kind)
        encoded_run = run.encode()
        self._run_tail = _RUN_TAG + _varint(len(encoded_run)) + encoded_run if run else b""
        """Frame.run after everything else (protobuf writes fields by number)."""
        self.parts = parts
        self.chunk_bytes = chunk_bytes
        self.report = report
        self.on_sent = on_sent
        self.nbytes = sum(len(p) for p in parts)
        self.count = max(1, -(-self.nbytes // chunk_bytes))
        self.wire_bytes = sum(
            len(_chunk_header(call_id, seq, seq == self.count - 1, self._size(seq), self.kind))
            + self._size(seq)
            + len(self._run_tail)
            + GRPC_PREFIX_BYTES
            for seq in range(self.count)
        )

    def _size(self, seq: int) -> int:
        return min(self.chunk_bytes, self.nbytes - seq * self.chunk_bytes)

    def frames(self) -> Iterator[bytes]:
        views = [memoryview(p).cast("B") for p in self.parts if len(p)]
        index, offset = 0, 0
        for seq in range(self.count):
            last = seq == self.count - 1
            need = self._size(seq)
            head = _chunk_header(self.call_id, seq, last, need, self.kind)
            pieces: list[bytes | memoryview] = [head]
            while need:
                view = views[index]
                take = min(need, len(view) - offset)
                pieces.append(view[offset : offset + take])
                need -= take
                offset += take
                if offset == len(view):
                    index, offset = index + 1, 0
            if last and self.report is not None:
                report = self.report.SerializeToString()
                pieces += [_REPORT_TAG, _varint(len(report)), report]
            pieces.append(self._run_tail)
            yield b"".join(pieces)

    def sent(self) -> None:
        if self.on_sent is not None:
            self.on_sent()


def serialize(frame: pb.Frame | bytes) -> bytes:
    """The gRPC serialiser of both ends: a frame object, or one ``Outgoing`` serialised."""
    return frame if isinstance(frame, bytes) else frame.SerializeToString()


class Chunk:
    """A received CHUNK frame whose ``data`` is a view into the bytes gRPC handed over (no
    copy); every other field reads from the parsed rest of the frame."""

    __slots__ = ("_frame", "data")

    def __init__(self, frame: pb.Frame, data: memoryview) -> None:
        self._frame = frame
        self.data = data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._frame, name)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = raw[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _data_field(raw: bytes) -> tuple[int, int, int] | None:
    """Where field 5 (``data``) lies in a serialised frame: (tag start, data start, end)."""
    pos, found = 0, None
    while pos < len(raw):
        start = pos
        tag, pos = _read_varint(raw, pos)
        wire_type = tag & 7
        if wire_type == 0:
            _, pos = _read_varint(raw, pos)
        elif wire_type == 2:
            size, pos = _read_varint(raw, pos)
            if tag >> 3 == 5:
                found = (start, pos, pos + size)
            pos += size
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            return None
    return found if pos == len(raw) else None


def parse(raw: bytes) -> pb.Frame | Chunk:
    """The gRPC deserialiser of both ends: a CHUNK frame keeps its data as a view of
    ``raw`` (protobuf would copy it twice, into the message and out again); anything else,
    and anything malformed, is left to protobuf (which raises on malformed input)."""
    try:
        where = _data_field(raw)
    except IndexError:  # a truncated varint
        where = None
    whole: pb.Frame
    if where is None:
        whole = pb.Frame.FromString(raw)
        return whole
    tag, start, end = where
    frame: pb.Frame = pb.Frame.FromString(raw[:tag] + raw[end:])
    if frame.kind not in (pb.Frame.CHUNK, pb.Frame.PEER_REQUEST, pb.Frame.PEER_REPLY):
        whole = pb.Frame.FromString(raw)
        return whole
    return Chunk(frame, memoryview(raw)[start:end])


def report_wire_bytes(report: pb.Report) -> int:
    """What a report adds to the frame that carries it."""
    size = int(report.ByteSize())
    return len(_REPORT_TAG) + len(_varint(size)) + size


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

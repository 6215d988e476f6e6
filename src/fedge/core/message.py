"""Messages: the only thing that crosses a node boundary.

The wire form is ``b"FEDG" | version:u8 | header_len:u32 | header JSON | tensor bytes``.
The header holds the envelope and the payload tree with every tensor replaced by a
reference (dtype, shape, index); the tensors' raw bytes follow in index order. ``nbytes()``
is exactly ``len(encode())`` without building the tensor part.

An ``Update`` travels in its encoding (``fedge.core.codec``): the codec's wire tree replaces
the dense state, and the receiver decodes it back; an update without an encoding travels
dense.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from fedge.core import codecs as _codecs  # noqa: F401  (registers the codecs)
from fedge.core import sparse as _sparse  # noqa: F401  (registers the "mask" codec)
from fedge.core.codec import CODECS
from fedge.core.errors import FedgeError
from fedge.core.update import Encoding, Update, Work

MAGIC = b"FEDG"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")
_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


class MessageError(FedgeError):
    """A message that cannot be decoded (malformed, truncated or of an unknown version)."""


@dataclass
class Message:
    """One message between two nodes; ``payload`` is a tree of plain values and tensors."""

    src: str
    dst: str
    kind: str
    round: int = 0
    payload: dict[str, Any] = field(default_factory=dict)

    def reply(self, kind: str, payload: dict[str, Any] | None = None) -> Message:
        """A message back to the sender, in the same round."""
        return Message(self.dst, self.src, kind, self.round, payload or {})

    def _header(self) -> tuple[bytes, list[torch.Tensor]]:
        tensors: list[torch.Tensor] = []
        tree = _encode_tree(self.payload, tensors)
        env = {"src": self.src, "dst": self.dst, "kind": self.kind, "round": self.round}
        header = json.dumps({**env, "payload": tree}, separators=(",", ":")).encode()
        return header, tensors

    def nbytes(self) -> int:
        header, tensors = self._header()
        return _PREFIX.size + len(header) + sum(t.numel() * t.element_size() for t in tensors)

    def compressed(self) -> bool:
        """True when an update in the payload travels in a codec's form."""
        return any(isinstance(v, Update) and v.encoding for v in self.payload.values())

    def dense_nbytes(self) -> int:
        """What ``nbytes()`` would be if every update in the payload travelled dense (the
        size before compression)."""
        if not self.compressed():
            return self.nbytes()
        payload = {
            k: replace(v, encoding=None) if isinstance(v, Update) else v
            for k, v in self.payload.items()
        }
        return Message(self.src, self.dst, self.kind, self.round, payload).nbytes()

    def carries_model(self) -> bool:
        """True when the payload holds a model or model update (a model transfer)."""
        return any(isinstance(v, Update) for v in self.payload.values())

    def encode(self) -> bytes:
        header, tensors = self._header()
        parts = [_PREFIX.pack(MAGIC, VERSION, len(header)), header]
        parts.extend(_tensor_bytes(t) for t in tensors)
        return b"".join(parts)

    def encode_parts(self, cache: dict[int, bytes] | None = None) -> list[bytes]:
        """``encode()`` in pieces (prefix and header, then each tensor's bytes), not joined.

        ``cache`` (``id(tensor)`` -> bytes) lets messages that share tensors (a broadcast of
        one model) encode each tensor once; the caller keeps the messages, hence the
        tensors, alive while it uses the cache."""
        header, tensors = self._header()
        parts = [_PREFIX.pack(MAGIC, VERSION, len(header)) + header]
        for t in tensors:
            if cache is None:
                parts.append(_tensor_bytes(t))
                continue
            raw = cache.get(id(t))
            if raw is None:
                raw = cache[id(t)] = _tensor_bytes(t)
            parts.append(raw)
        return parts

    @staticmethod
    def decode(data: bytes) -> Message:
        if len(data) < _PREFIX.size:
            raise MessageError(f"message of {len(data)} bytes is shorter than its prefix")
        magic, version, header_len = _PREFIX.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise MessageError(f"not a fedge v{VERSION} message (magic {magic!r}, v{version})")
        end = _PREFIX.size + header_len
        try:
            head = json.loads(data[_PREFIX.size : end].decode())
            buffers = _split_buffers(head["payload"], memoryview(data)[end:])
            payload = _decode_tree(head["payload"], buffers)
            return Message(
                str(head["src"]), str(head["dst"]), str(head["kind"]), int(head["round"]), payload
            )
        except MessageError:
            raise
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise MessageError(f"malformed message header: {exc}") from exc
        except RecursionError:  # a header nested deeper than any payload tree
            raise MessageError("malformed message header: nested too deeply") from None


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(torch.uint8).numpy().tobytes()


def _tensor_ref(t: torch.Tensor, tensors: list[torch.Tensor]) -> dict[str, Any]:
    tensors.append(t)
    dtype = str(t.dtype).removeprefix("torch.")
    return {"__tensor__": len(tensors) - 1, "dtype": dtype, "shape": list(t.shape)}


def _encode_tree(obj: Any, tensors: list[torch.Tensor]) -> Any:
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, torch.Tensor):
        return _tensor_ref(obj, tensors)
    if isinstance(obj, np.ndarray):
        return _tensor_ref(torch.from_numpy(np.ascontiguousarray(obj)), tensors)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Update):
        fields: dict[str, Any] = {
            "weight": obj.weight,
            "kind": obj.kind,
            "metrics": dict(obj.metrics),
            "samples": obj.work.samples,
            "flops": obj.work.flops,
            "origin": obj.origin,
            "via": obj.via,
            "round": obj.round,
        }
        if obj.encoding is None:
            fields["state"] = obj.state
        else:
            fields["codec"] = obj.encoding.codec
            fields["data"] = obj.encoding.data
        return {"__update__": _encode_tree(fields, tensors)}
    if isinstance(obj, Mapping):
        return {"__map__": [[str(k), _encode_tree(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [_encode_tree(v, tensors) for v in obj]
    raise TypeError(f"cannot encode a {type(obj).__name__} in a message payload")


def _tensor_specs(tree: Any, out: list[dict[str, Any]]) -> None:
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            out.append(tree)
            return
        for v in tree.values():
            _tensor_specs(v, out)
    elif isinstance(tree, list):
        for v in tree:
            _tensor_specs(v, out)


def _split_buffers(tree: Any, body: memoryview) -> list[torch.Tensor]:
    specs: list[dict[str, Any]] = []
    _tensor_specs(tree, specs)
    specs.sort(key=lambda s: int(s["__tensor__"]))
    tensors: list[torch.Tensor] = []
    offset = 0
    for i, spec in enumerate(specs):
        if int(spec["__tensor__"]) != i or spec["dtype"] not in _DTYPES:
            raise MessageError(f"bad tensor reference {spec!r}")
        dtype = _DTYPES[spec["dtype"]]
        shape = [int(s) for s in spec["shape"]]
        if any(s < 0 for s in shape):
            raise MessageError(f"bad tensor reference {spec!r}")
        storage = torch.bool if dtype == torch.bool else dtype
        size = math.prod(shape) * torch.empty((), dtype=storage).element_size()
        if offset + size > len(body):
            raise MessageError("message body is shorter than its tensors")
        tensors.append(_from_bytes(body[offset : offset + size], dtype, shape))
        offset += size
    if offset != len(body):
        raise MessageError(f"{len(body) - offset} trailing bytes after the last tensor")
    return tensors


def _from_bytes(raw: memoryview, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    if len(raw) == 0:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    t = flat.to(torch.bool) if dtype == torch.bool else flat.view(dtype)
    return t.reshape(shape)


def _decode_tree(tree: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [_decode_tree(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[int(tree["__tensor__"])]
    if "__map__" in tree:
        return {str(k): _decode_tree(v, tensors) for k, v in tree["__map__"]}
    if "__update__" in tree:
        f = _decode_tree(tree["__update__"], tensors)
        encoding = Encoding(str(f["codec"]), f["data"]) if "codec" in f else None
        return Update(
            state=f["state"] if encoding is None else _decode_state(encoding),
            encoding=encoding,
            weight=float(f["weight"]),
            kind=f["kind"],
            metrics=f["metrics"],
            work=Work(int(f["samples"]), float(f["flops"])),
            origin=f["origin"],
            via=f["via"],
            round=int(f["round"]),
        )
    raise MessageError(f"unknown payload node {sorted(tree)!r}")


def _decode_state(encoding: Encoding) -> dict[str, torch.Tensor]:
    if encoding.codec not in CODECS:
        known = ", ".join(CODECS.names())
        raise MessageError(f"update in unknown codec {encoding.codec!r} (known: {known})")
    try:
        return CODECS.get(encoding.codec).decode(encoding.data)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise MessageError(f"malformed {encoding.codec!r} update: {exc}") from exc

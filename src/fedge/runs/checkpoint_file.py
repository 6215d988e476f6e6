"""The checkpoint file: magic bytes, the header length, a JSON header, the pickled payload.

Written atomically (a temporary file in the same directory, fsync, os.replace, fsync of the
directory), so a crash leaves the previous checkpoint whole. The header holds the payload's
length and SHA-256 (a truncated or corrupt file is refused before anything is unpickled) and
whatever the caller adds (round, run id, config hash, versions); it reads without the payload.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedge.core.errors import FedgeError
from fedge.core.files import atomic_write_bytes

FORMAT_VERSION = 1
_MAGIC = b"FEDGECKP"
_LENGTH = struct.Struct("<Q")
TMP_SUFFIX = ".tmp"
"""The ending of the temporary files atomic_write_bytes leaves if killed mid-write."""
"""A checkpoint being written is ``.NAME.PID.tmp`` (left behind when a process dies mid-write)."""


class CheckpointError(FedgeError):
    """A checkpoint that is missing, unreadable, or not for this run / config / code."""


def write_checkpoint_file(
    path: Path, header: Mapping[str, Any], payload: memoryview
) -> dict[str, Any]:
    """Write the header (plus ``format`` and the payload's length and SHA-256) and the
    payload; returns the header as written."""
    full = {
        **header,
        "format": FORMAT_VERSION,
        "payload_nbytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    head = json.dumps(full, sort_keys=True).encode()
    atomic_write_bytes(path, b"".join([_MAGIC, _LENGTH.pack(len(head)), head, payload]))
    return full


def read_checkpoint_header(path: str | Path) -> dict[str, Any]:
    """The header of a checkpoint file, checked for format and length (not the payload)."""
    return read_checkpoint_file(Path(path), with_payload=False)[0]


def read_checkpoint_file(path: Path, with_payload: bool) -> tuple[dict[str, Any], bytes]:
    expected = f"a fedge checkpoint written by `fedge run` (format {FORMAT_VERSION})"
    try:
        with open(path, "rb") as fh:
            start = fh.read(len(_MAGIC) + _LENGTH.size)
            if len(start) < len(_MAGIC) + _LENGTH.size or not start.startswith(_MAGIC):
                raise CheckpointError(f"{path}: not a checkpoint; expected {expected}")
            (n_head,) = _LENGTH.unpack(start[len(_MAGIC) :])
            header = _parse_header(path, fh.read(min(n_head, 1 << 20)), n_head, expected)
            size = len(start) + n_head + int(header["payload_nbytes"])
            if os.fstat(fh.fileno()).st_size != size:
                raise CheckpointError(f"{path}: truncated or padded checkpoint; expected {size} B")
            payload = fh.read() if with_payload else b""
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint; expected {expected}") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from None
    if with_payload and hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise CheckpointError(f"{path}: corrupt checkpoint (its SHA-256 does not match)")
    return header, payload


def _parse_header(path: Path, head: bytes, n_head: int, expected: str) -> dict[str, Any]:
    try:
        header = json.loads(head) if len(head) == n_head else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    fields = ("format", "round", "payload_nbytes", "payload_sha256")
    if not isinstance(header, dict) or not all(k in header for k in fields):
        raise CheckpointError(f"{path}: corrupt checkpoint header; expected {expected}")
    if not isinstance(header["payload_nbytes"], int) or not isinstance(header["round"], int):
        raise CheckpointError(f"{path}: corrupt checkpoint header; expected {expected}")
    if header["format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {header['format']!r}; expected {expected}"
        )
    return header

"""Codecs: the wire forms of model updates, by name.

A codec turns its wire tree (a mapping of tensors and plain values that a ``Message``
serialises byte for byte) back into a dense model state. Each codec has its own ``encode``
with the arguments it needs (a mask, quantization levels, a scale); ``decode`` is the one
method every codec shares, so a receiver needs only the codec's name. ``encoded`` builds
the update a sender puts on the wire: its state is the decoded tree, so an in-process
receiver and one that decodes the bytes see exactly the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

from fedge.core.registry import Registry
from fedge.core.update import Encoding, ModelState, Update, UpdateKind


class Codec(Protocol):
    """Decodes a wire tree into a dense state (every key, dtype and shape restored)."""

    def decode(self, data: Mapping[str, Any]) -> ModelState: ...


CODECS: Registry[Codec] = Registry("codec")


def encoded(
    update: Update, codec: str, data: Mapping[str, Any], kind: UpdateKind | None = None
) -> Update:
    """``update`` sent in ``codec``'s form ``data``; its state becomes the decoded data."""
    state = CODECS.get(codec, "codec").decode(data)
    return replace(update, state=state, kind=kind or update.kind, encoding=Encoding(codec, data))


def decode_update_state(encoding: Encoding) -> ModelState:
    """The dense state behind an encoding (a wire decoder's entry point)."""
    return CODECS.get(encoding.codec, "codec").decode(encoding.data)

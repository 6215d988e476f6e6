"""Compact wire form of a pruned model: kept values plus the mask as packed bits (codec "mask").

``encode_sparse`` returns a plain dict (tensors, ints, lists) so that a ``Message`` carrying
it reports its exact wire size. Per key: ``values`` (1-D, the state's dtype, kept entries in
flat order), ``bits`` (uint8, ``numpy.packbits`` of the flat mask; absent for unmasked keys,
which are sent dense) and ``shape``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedge.core.codec import CODECS
from fedge.core.errors import ConfigError
from fedge.core.update import ModelState


def _entry(t: torch.Tensor, m: torch.Tensor | None) -> dict[str, Any]:
    flat = t.detach().reshape(-1)
    if m is None:
        return {"values": flat.clone(), "shape": list(t.shape)}
    if m.shape != t.shape:
        raise ConfigError("mask", f"shape {list(m.shape)}", f"the state's shape {list(t.shape)}")
    keep = m.detach().reshape(-1).to(torch.bool)
    bits = torch.from_numpy(np.packbits(keep.numpy()))
    return {"values": flat[keep].clone(), "bits": bits, "shape": list(t.shape)}


def encode_sparse(
    state: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """Every entry of ``state``: masked keys as kept values + packed mask, others dense."""
    return {k: _entry(v, mask.get(k)) for k, v in state.items()}


def _keep(entry: Mapping[str, Any]) -> torch.Tensor:
    """The flat boolean mask of a sparse entry."""
    n = math.prod(int(s) for s in entry["shape"])
    bits = np.asarray(entry["bits"].numpy(), dtype=np.uint8)
    return torch.from_numpy(np.unpackbits(bits, count=n).astype(bool))


def _decode_entry(
    entry: Mapping[str, Any], dtype: torch.dtype | None, keep: torch.Tensor | None = None
) -> torch.Tensor:
    values: torch.Tensor = entry["values"]
    shape = [int(s) for s in entry["shape"]]
    values = values if dtype is None else values.to(dtype)
    if "bits" not in entry:
        return values.clone().reshape(shape)
    keep = _keep(entry) if keep is None else keep
    out = torch.zeros(keep.numel(), dtype=values.dtype)
    out[keep] = values
    return out.reshape(shape)


def decode_sparse(
    payload: Mapping[str, Mapping[str, Any]], like: Mapping[str, torch.Tensor] | None = None
) -> ModelState:
    """Dense state with zeros outside the mask; with ``like``, its dtypes and its entries
    for keys the payload lacks."""
    if like is None:
        return {k: _decode_entry(e, None) for k, e in payload.items()}
    out: ModelState = {}
    for k, v in like.items():
        out[k] = _decode_entry(payload[k], v.dtype) if k in payload else v.detach().clone()
    return out


def decode_mask(payload: Mapping[str, Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """The sender's mask: a boolean tensor per key sent sparse (dense keys are absent)."""
    return {
        k: _keep(e).reshape([int(s) for s in e["shape"]]) for k, e in payload.items() if "bits" in e
    }


def decode_with_mask(
    payload: Mapping[str, Mapping[str, Any]], like: Mapping[str, torch.Tensor]
) -> tuple[ModelState, dict[str, torch.Tensor]]:
    """``decode_sparse(payload, like)`` and ``decode_mask(payload)``, unpacking each mask once."""
    masks = decode_mask(payload)
    state: ModelState = {}
    for k, v in like.items():
        if k not in payload:
            state[k] = v.detach().clone()
            continue
        keep = masks[k].reshape(-1) if k in masks else None
        state[k] = _decode_entry(payload[k], v.dtype, keep)
    return state, masks


def sparse_nbytes(state: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> int:
    """Raw tensor bytes of ``encode_sparse(state, mask)``: values plus ceil(n/8) mask bytes."""
    total = 0
    for k, v in state.items():
        m = mask.get(k)
        kept = v.numel() if m is None else int(m.sum())
        total += kept * v.element_size() + (0 if m is None else math.ceil(v.numel() / 8))
    return total


class MaskCodec:
    """Codec "mask": a pruned model as kept values plus its packed mask (``encode_sparse``)."""

    def decode(self, data: Mapping[str, Any]) -> ModelState:
        return decode_sparse(data)


CODECS.add("mask", MaskCodec(), "pruned tensors: kept values + packed bitmask; others dense")

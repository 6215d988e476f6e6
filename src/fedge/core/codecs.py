"""The compressed wire forms of model updates (registered in ``fedge.core.codec.CODECS``).

A tree maps every state key to an entry. Integer entries (BatchNorm counters) and entries a
codec leaves alone are ``{"dense": tensor}``. A floating entry records its ``dtype`` name
and ``shape``, which ``decode`` restores, plus its codec's fields:

- "fp16": ``half``, the tensor in float16 (float16 and bfloat16 entries travel dense);
- "sparse": the kept positions and ``values`` (float32; 16-bit tensors keep their dtype);
- "qsgd": ``levels`` s, an fp32 ``scale`` and ``codes``, b = 1 + ceil(log2(s+1)) bits per
  entry (sign bit, then the magnitude, most significant bit first), packed;
- "ternary": the kept positions, packed ``signs`` (1 = negative) per kept entry, fp32 ``scale``;
- "sign": packed ``signs`` for every entry and an fp32 ``scale``.

Positions travel as int32 flat indices (``index``, COO: 4 bytes per kept entry) or as a
packed bitmask (``bits``, ceil(n/8) bytes), whichever is smaller (ties go to the mask), as
in Meta's FLSim. Every multi-bit field is ``numpy.packbits`` output, so a field of m bits
costs ceil(m/8) bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedge.core.codec import CODECS
from fedge.core.update import ModelState

_FLOATS = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_HALVES = (torch.float16, torch.bfloat16)
_FP16_MAX = float(torch.finfo(torch.float16).max)
MAX_LEVELS = 2**15 - 1
"""Largest QSGD level count s: a code (sign + magnitude) fits 16 bits."""

# --------------------------------------------------------------------------- building


def _dense(t: torch.Tensor) -> dict[str, Any]:
    return {"dense": t.detach().clone()}


def _head(t: torch.Tensor) -> dict[str, Any]:
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}


def _packed(flags: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(flags.reshape(-1).numpy()))


def _scale(value: float) -> torch.Tensor:
    return torch.tensor(float(value), dtype=torch.float32)


def _kept(flat: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Sorted flat positions of the nonzeros of ``flat`` (among ``index`` when given)."""
    if index is None:
        return flat.nonzero().reshape(-1)
    index = torch.unique(index.reshape(-1).to(torch.int64))
    return index[flat[index] != 0]


def _positions(kept: torch.Tensor, n: int) -> dict[str, Any]:
    """COO int32 indices or a packed bitmask, whichever is smaller."""
    if n >= 2**31:
        raise ValueError(f"a tensor of {n} entries is too large for int32 positions")
    if 4 * kept.numel() < math.ceil(n / 8):
        return {"index": kept.to(torch.int32)}
    keep = torch.zeros(n, dtype=torch.bool)
    keep[kept] = True
    return {"bits": _packed(keep)}


def _entries(
    state: Mapping[str, torch.Tensor], floating: Callable[[str, torch.Tensor], dict[str, Any]]
) -> dict[str, Any]:
    return {
        k: {**_head(v), **floating(k, v.detach())} if v.is_floating_point() else _dense(v)
        for k, v in state.items()
    }


def encode_fp16(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Codec "fp16": float32/float64 entries as float16, clamped to ±65504 so that an
    out-of-range value arrives as the largest half rather than as infinity."""
    return {
        k: (
            {**_head(v), "half": v.detach().clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16)}
            if v.dtype in (torch.float32, torch.float64)
            else _dense(v)
        )
        for k, v in state.items()
    }


def encode_sparse(
    state: Mapping[str, torch.Tensor], index: Mapping[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """Codec "sparse": each floating entry as its nonzeros (only those at the flat
    positions ``index[key]`` when given); the receiver restores zeros elsewhere."""

    def floating(key: str, t: torch.Tensor) -> dict[str, Any]:
        flat = t.reshape(-1)
        kept = _kept(flat, None if index is None else index[key])
        values = flat[kept] if t.dtype in _HALVES else flat[kept].to(torch.float32)
        return {**_positions(kept, flat.numel()), "values": values}

    return _entries(state, floating)


def encode_ternary(
    state: Mapping[str, torch.Tensor],
    scales: Mapping[str, float],
    index: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Codec "ternary" (STC): the nonzeros of each floating entry (among ``index[key]`` when
    given) become ±``scales[key]`` by their sign; every other entry is zero."""

    def floating(key: str, t: torch.Tensor) -> dict[str, Any]:
        flat = t.reshape(-1)
        kept = _kept(flat, None if index is None else index[key])
        signs = _packed(flat[kept] < 0)
        return {**_positions(kept, flat.numel()), "signs": signs, "scale": _scale(scales[key])}

    return _entries(state, floating)


def encode_sign(state: Mapping[str, torch.Tensor], scales: Mapping[str, float]) -> dict[str, Any]:
    """Codec "sign": every floating entry as ±``scales[key]`` by its sign; zeros (and NaN)
    travel as +, since one bit per entry leaves no room for a third value."""

    def floating(key: str, t: torch.Tensor) -> dict[str, Any]:
        return {"signs": _packed(t < 0), "scale": _scale(scales[key])}

    return _entries(state, floating)


def code_bits(levels: int) -> int:
    """Bits per QSGD entry for s = ``levels``: 1 + ceil(log2(s+1)) (sign + magnitude)."""
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"QSGD levels must be an integer in [1, {MAX_LEVELS}], got {levels!r}")
    return 1 + levels.bit_length()


def _spans(b: int) -> list[tuple[int, int, int]]:
    """(entry j, byte i, shift) for each byte of a group of 8 b-bit codes that entry j
    touches: the code scaled by 2**shift, masked, is its part of that byte."""
    out: list[tuple[int, int, int]] = []
    for j in range(8):
        end = (j + 1) * b
        out.extend((j, i, 8 * i + 8 - end) for i in range(j * b // 8, (end - 1) // 8 + 1))
    return out


def _shift(x: np.ndarray[Any, Any], shift: int) -> np.ndarray[Any, Any]:
    return x << shift if shift >= 0 else x >> -shift


def _pack_codes(codes: np.ndarray[Any, Any], b: int) -> np.ndarray[Any, Any]:
    """``b``-bit codes, most significant bit first, packed as ``numpy.packbits`` would
    (ceil(n·b/8) bytes), computed per group of 8 codes (b bytes) without a bit matrix."""
    n = codes.size
    group = np.zeros((-(-n // 8), 8), dtype=np.uint32)
    group.reshape(-1)[:n] = codes
    out = np.zeros((group.shape[0], b), dtype=np.uint32)
    for j, i, shift in _spans(b):
        out[:, i] |= _shift(group[:, j], shift) & 0xFF
    return out.astype(np.uint8).reshape(-1)[: -(-n * b // 8)]


def _unpack_codes(packed: np.ndarray[Any, Any], n: int, b: int) -> np.ndarray[Any, Any]:
    """Inverse of ``_pack_codes``: ``n`` codes of ``b`` bits."""
    data = np.zeros((-(-n // 8), b), dtype=np.uint32)
    data.reshape(-1)[: packed.size] = packed
    codes = np.zeros((data.shape[0], 8), dtype=np.uint32)
    for j, i, shift in _spans(b):
        codes[:, j] |= _shift(data[:, i], -shift)
    return (codes.reshape(-1)[:n] & ((1 << b) - 1)).astype(np.int32)


def encode_qsgd(
    state: Mapping[str, torch.Tensor],
    levels: Mapping[str, torch.Tensor],
    scales: Mapping[str, float],
    s: int,
) -> dict[str, Any]:
    """Codec "qsgd": each floating entry as ``scales[key]`` times the signed integer
    ``levels[key]`` (same shape, values in [-s, s]), bit-packed; ``state`` gives the keys,
    dtypes, shapes and the integer entries."""
    b = code_bits(s)

    def floating(key: str, t: torch.Tensor) -> dict[str, Any]:
        level = levels[key].reshape(-1).to(torch.int32)
        if level.numel() != t.numel() or (level.numel() and int(level.abs().max()) > s):
            raise ValueError(f"QSGD levels of {key!r} must match its shape and lie in [-s, s]")
        codes = ((level < 0).to(torch.int32) << (b - 1)) | level.abs()
        packed = torch.from_numpy(_pack_codes(codes.numpy(), b))
        return {"levels": s, "scale": _scale(scales[key]), "codes": packed}

    return _entries(state, floating)


# --------------------------------------------------------------------------- reading


def _field(entry: Mapping[str, Any], name: str) -> Any:
    if name not in entry:
        raise ValueError(f"missing field {name!r}")
    return entry[name]


def _tensor(entry: Mapping[str, Any], name: str, numel: int | None = None) -> torch.Tensor:
    t = _field(entry, name)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"field {name!r} is a {type(t).__name__}, not a tensor")
    if numel is not None and t.numel() != numel:
        raise ValueError(f"field {name!r} has {t.numel()} entries, expected {numel}")
    return t


def _bits(entry: Mapping[str, Any], name: str, count: int) -> torch.Tensor:
    """``count`` flags unpacked from the uint8 field ``name``."""
    packed = _tensor(entry, name, math.ceil(count / 8))
    if packed.dtype != torch.uint8:
        raise TypeError(f"field {name!r} must be uint8, not {packed.dtype}")
    flags = np.unpackbits(packed.numpy().reshape(-1), count=count).astype(bool)
    return torch.from_numpy(flags)


def _read_positions(entry: Mapping[str, Any], n: int) -> tuple[torch.Tensor, int]:
    """The kept positions (an index or a boolean mask) and how many there are."""
    if "index" not in entry:
        mask = _bits(entry, "bits", n)
        return mask, int(mask.sum())
    index = _tensor(entry, "index").reshape(-1).to(torch.int64)
    if index.numel() and (int(index[0]) < 0 or int(index[-1]) >= n):
        raise ValueError(f"positions out of range for {n} entries")
    if index.numel() > 1 and not bool((index[1:] > index[:-1]).all()):
        raise ValueError("positions are not strictly increasing")
    return index, index.numel()


def _decode_fp16(entry: Mapping[str, Any], n: int) -> torch.Tensor:
    return _tensor(entry, "half", n).reshape(-1)


def _decode_sparse(entry: Mapping[str, Any], n: int) -> torch.Tensor:
    positions, k = _read_positions(entry, n)
    values = _tensor(entry, "values", k).reshape(-1)
    out = torch.zeros(n, dtype=values.dtype)
    out[positions] = values
    return out


def _plus_minus(entry: Mapping[str, Any], count: int) -> torch.Tensor:
    """±scale per packed sign bit (1 = negative), in float32."""
    scale = _tensor(entry, "scale", 1).to(torch.float32).reshape(())
    return torch.where(_bits(entry, "signs", count), -scale, scale)


def _decode_ternary(entry: Mapping[str, Any], n: int) -> torch.Tensor:
    positions, k = _read_positions(entry, n)
    out = torch.zeros(n, dtype=torch.float32)
    out[positions] = _plus_minus(entry, k)
    return out


def _decode_sign(entry: Mapping[str, Any], n: int) -> torch.Tensor:
    return _plus_minus(entry, n)


def _decode_qsgd(entry: Mapping[str, Any], n: int) -> torch.Tensor:
    s = _field(entry, "levels")
    b = code_bits(s)
    packed = _tensor(entry, "codes", math.ceil(n * b / 8))
    if packed.dtype != torch.uint8:
        raise TypeError(f"field 'codes' must be uint8, not {packed.dtype}")
    codes = _unpack_codes(packed.numpy().reshape(-1), n, b)
    magnitude = codes & ((1 << (b - 1)) - 1)
    if magnitude.size and int(magnitude.max()) > s:
        raise ValueError(f"a QSGD level exceeds s = {s}")
    level = torch.from_numpy(np.where(codes >> (b - 1), -magnitude, magnitude))
    return _tensor(entry, "scale", 1).to(torch.float32).reshape(()) * level.to(torch.float32)


def _decode_entry(
    entry: Any, floating: Callable[[Mapping[str, Any], int], torch.Tensor]
) -> torch.Tensor:
    if not isinstance(entry, Mapping):
        raise TypeError(f"a {type(entry).__name__}, not a mapping")
    if "dense" in entry:
        return _tensor(entry, "dense").clone()
    dtype = _FLOATS.get(str(_field(entry, "dtype")))
    shape = [int(s) for s in _field(entry, "shape")]
    if dtype is None or any(s < 0 for s in shape):
        raise ValueError(f"bad dtype {entry['dtype']!r} or shape {shape}")
    return floating(entry, math.prod(shape)).to(dtype).reshape(shape)


def _decode(
    data: Mapping[str, Any], floating: Callable[[Mapping[str, Any], int], torch.Tensor]
) -> ModelState:
    out: ModelState = {}
    for key, entry in data.items():
        try:
            out[key] = _decode_entry(entry, floating)
        except (ValueError, TypeError, IndexError, RuntimeError) as exc:
            raise ValueError(f"entry {key!r}: {exc}") from exc
    return out


@dataclass(frozen=True)
class EntryCodec:
    """A codec whose floating entries each decode with one function (see ``_decode``)."""

    decode_entry: Callable[[Mapping[str, Any], int], torch.Tensor]
    """(entry, number of elements) -> the flat floating tensor."""

    def decode(self, data: Mapping[str, Any]) -> ModelState:
        return _decode(data, self.decode_entry)


CODECS.add("fp16", EntryCodec(_decode_fp16), "float32/float64 entries as float16; others dense")
CODECS.add(
    "sparse", EntryCodec(_decode_sparse), "nonzeros: fp32 values at COO or bitmask positions"
)
CODECS.add(
    "qsgd",
    EntryCodec(_decode_qsgd),
    "QSGD: fp32 scale + signed levels, 1+ceil(log2(s+1)) bits each",
)
CODECS.add(
    "ternary", EntryCodec(_decode_ternary), "STC: positions + one sign bit each + one fp32 scale"
)
CODECS.add("sign", EntryCodec(_decode_sign), "signSGD: one sign bit per entry + one fp32 scale")

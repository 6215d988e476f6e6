"""Compressors: transforms that send an update in a compressed codec (``fedge.core.codecs``).

Each returns ``encoded(update, codec, data)``, so the update's state is exactly what the
receiver decodes and ``Message.nbytes`` counts the compressed bytes. Only floating entries
are compressed; integer entries travel dense and unchanged. Work happens in the tensor's
dtype (float32 for float16/bfloat16 entries).

Error feedback (Stich et al. 2018; Karimireddy et al. 2019): ``memory["residual"]`` holds,
per floating key, what was computed but not received (input + old residual - decoded); it
starts at zero and is added to the next input before compressing, so no mass is lost.
It applies to deltas (what the client pipeline sends when the request carried a model);
a full state is compressed without memory.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from fedge.core.codec import encoded
from fedge.core.codecs import (
    MAX_LEVELS,
    encode_fp16,
    encode_qsgd,
    encode_sign,
    encode_sparse,
    encode_ternary,
)
from fedge.core.errors import ConfigError, FedgeError
from fedge.core.registry import Registry
from fedge.core.update import ModelState, Update
from fedge.transforms.pipeline import TRANSFORMS, Transform

Index = dict[str, torch.Tensor]


def _ratio(value: Any) -> Fraction:
    """``value`` as the fraction the user wrote: ratio 0.07 keeps 7 of 100, not 8."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) <= 1:
        raise ConfigError("ratio", value, "a number with 0 < ratio <= 1")
    return Fraction(repr(float(value)))


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(name, value, "true or false")
    return value


def _count(ratio: Fraction, n: int) -> int:
    """k = ceil(ratio * n) entries to keep."""
    return -((-ratio.numerator * n) // ratio.denominator)


def top_k(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted flat positions of the ``k`` largest entries of 1-D ``magnitude``; among equal
    values the lower positions win, so the choice is deterministic."""
    n = magnitude.numel()
    if k >= n:
        return torch.arange(n)
    if k <= 0:
        return torch.zeros(0, dtype=torch.int64)
    kth = torch.kthvalue(magnitude, n - k + 1).values
    above = (magnitude > kth).nonzero().reshape(-1)
    ties = (magnitude == kth).nonzero().reshape(-1)[: k - above.numel()]
    return torch.cat([above, ties]).sort().values


def _torch_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


def _feedback(update: Update, error_feedback: bool) -> bool:
    """Error feedback applies to deltas only: a full model (a state sent where the request
    carried no reference, e.g. a published MS-FL model) is compressed without memory, since
    one model's residual means nothing added to the next model."""
    return error_feedback and update.kind == "delta"


def _inputs(update: Update, memory: dict[str, Any], error_feedback: bool) -> ModelState:
    """Floating entries in their working dtype, plus the residual under error feedback."""
    acc = {
        k: v.detach().to(v.dtype if v.dtype in (torch.float32, torch.float64) else torch.float32)
        for k, v in update.state.items()
        if v.is_floating_point()
    }
    residual = memory.get("residual") if error_feedback else None
    if residual is None:
        return acc
    expected = {k: list(v.shape) for k, v in acc.items()}
    if {k: list(v.shape) for k, v in residual.items()} != expected:
        raise FedgeError(
            "error feedback: the update's floating entries (keys and shapes) differ from the "
            "residual kept from earlier rounds; a compressor with error_feedback must see "
            "the same model every round (use a separate link or error_feedback = false)"
        )
    return {k: a + residual[k].to(a.dtype) for k, a in acc.items()}


def _remember(memory: dict[str, Any], acc: ModelState, sent: Update) -> None:
    memory["residual"] = {k: a - sent.state[k].to(a.dtype) for k, a in acc.items()}


def _like(state: Mapping[str, torch.Tensor], acc: ModelState) -> ModelState:
    """``state`` with its floating entries replaced by ``acc`` cast back to their dtype."""
    return {k: acc[k].to(v.dtype) if k in acc else v for k, v in state.items()}


class Fp16:
    """Floating entries sent as float16 (2 bytes each, relative error ≤ 2^-11)."""

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        return encoded(update, "fp16", encode_fp16(update.state))


class TopK:
    """Top-k: keep the ceil(ratio·n) largest-magnitude entries per tensor; error feedback on.

    Ties go to the lower flat position. The kept entries travel as fp32 values at COO or
    bitmask positions (codec "sparse"), whichever is smaller.
    """

    def __init__(self, ratio: float = 0.01, error_feedback: bool = True) -> None:
        self.ratio = _ratio(ratio)
        self.error_feedback = _flag("error_feedback", error_feedback)

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        feedback = _feedback(update, self.error_feedback)
        acc = _inputs(update, memory, feedback)
        index = {
            k: top_k(a.reshape(-1).abs(), _count(self.ratio, a.numel())) for k, a in acc.items()
        }
        out = encoded(update, "sparse", encode_sparse(_like(update.state, acc), index))
        if feedback:
            _remember(memory, acc, out)
        return out


class RandK:
    """Rand-k: keep ceil(ratio·n) uniformly random entries per tensor (optionally scaled n/k).

    ``unbiased`` multiplies the kept values by n/k so the expectation equals the input; it
    cannot be combined with error feedback, which needs a compressor that shrinks the error
    (rand-k scaled by n/k has E‖C(x) - x‖² = (n/k - 1)‖x‖², larger than ‖x‖² for k < n/2).
    Positions come from ``rng.choice`` without replacement (far faster than a randperm).
    """

    def __init__(
        self, ratio: float = 0.01, error_feedback: bool = False, unbiased: bool = False
    ) -> None:
        self.ratio = _ratio(ratio)
        self.error_feedback = _flag("error_feedback", error_feedback)
        self.unbiased = _flag("unbiased", unbiased)
        if self.unbiased and self.error_feedback:
            raise ConfigError("unbiased", True, "false when error_feedback is true")

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        feedback = _feedback(update, self.error_feedback)
        acc = _inputs(update, memory, feedback)
        index: Index = {}
        for key, a in acc.items():
            n = a.numel()
            k = _count(self.ratio, n)
            index[key] = torch.from_numpy(np.sort(rng.choice(n, size=k, replace=False)))
            if self.unbiased and 0 < k < n:
                acc[key] = a * (n / k)
        out = encoded(update, "sparse", encode_sparse(_like(update.state, acc), index))
        if feedback:
            _remember(memory, acc, out)
        return out


def quantize(flat: torch.Tensor, s: int, gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """QSGD levels of 1-D ``flat`` and the fp32 scale ‖flat‖₂/s: |v|/scale is rounded up with
    probability equal to its fractional part, so scale·level is unbiased."""
    scale = float(torch.tensor(float(torch.linalg.vector_norm(flat)) / s, dtype=torch.float32))
    if scale == 0.0 or flat.numel() == 0:
        return torch.zeros(flat.numel(), dtype=torch.int32), 0.0
    r = (flat.abs() / scale).clamp_(max=s)
    low = r.floor()
    level = (low + (torch.rand(r.shape, generator=gen, dtype=r.dtype) < r - low)).to(torch.int32)
    return torch.where(flat < 0, -level, level), scale


class QSGD:
    """QSGD stochastic quantization, s = levels per tensor, unbiased (FedPAQ uplink).

    Alistarh et al. 2017: each entry becomes ‖v‖₂/s · sign(v) · l with l ∈ {0..s} rounded
    stochastically from s|v|/‖v‖₂, so E[Q(v)] = v and E‖Q(v) - v‖² ≤ min(n/s², √n/s)‖v‖².
    Interpretation: the paper's Elias coding is replaced by fixed-width codes of
    1 + ceil(log2(s+1)) bits (sign + magnitude) per entry, and the scale is one fp32 per
    tensor (the paper's bucket is the whole tensor). FedPAQ (Reisizadeh et al. 2020) is
    FedAvg's periodic averaging with QSGD uploads: this transform on the device uplink.
    """

    def __init__(self, levels: int = 127) -> None:
        integral = isinstance(levels, numbers.Integral) and not isinstance(levels, bool)
        if not integral or not 1 <= levels <= MAX_LEVELS:
            raise ConfigError("levels", levels, f"an integer in [1, {MAX_LEVELS}]")
        self.levels = int(levels)

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        gen = _torch_generator(rng)
        levels: Index = {}
        scales: dict[str, float] = {}
        for key, a in _inputs(update, memory, False).items():
            level, scales[key] = quantize(a.reshape(-1), self.levels, gen)
            levels[key] = level.reshape(a.shape)
        return encoded(update, "qsgd", encode_qsgd(update.state, levels, scales, self.levels))


class STC:
    """Sparse ternary compression (STC): top-k, then ±μ (mean kept magnitude); error feedback.

    Sattler et al. 2019: per tensor the ceil(ratio·n) largest-magnitude entries (ties to the
    lower position) are replaced by sign·μ, μ the mean magnitude of those k entries; zeros
    among them stay zero. Interpretation: positions travel as COO or a bitmask, whichever is
    smaller, instead of the paper's Golomb code; μ is one fp32 per tensor.
    """

    def __init__(self, ratio: float = 0.01, error_feedback: bool = True) -> None:
        self.ratio = _ratio(ratio)
        self.error_feedback = _flag("error_feedback", error_feedback)

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        feedback = _feedback(update, self.error_feedback)
        acc = _inputs(update, memory, feedback)
        index: Index = {}
        scales: dict[str, float] = {}
        for key, a in acc.items():
            flat = a.reshape(-1)
            index[key] = top_k(flat.abs(), _count(self.ratio, flat.numel()))
            kept = flat[index[key]].abs()
            scales[key] = float(kept.mean()) if kept.numel() else 0.0
        out = encoded(update, "ternary", encode_ternary(_like(update.state, acc), scales, index))
        if feedback:
            _remember(memory, acc, out)
        return out


class SignSGD:
    """EF-signSGD: one sign bit per entry and one scale (mean |v|) per tensor, error feedback.

    Karimireddy et al. 2019: the update becomes (‖v‖₁/n)·sign(v) per tensor, with the error
    fed back. Zeros travel as + (one bit per entry has no third value).
    """

    def __init__(self, error_feedback: bool = True) -> None:
        self.error_feedback = _flag("error_feedback", error_feedback)

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        feedback = _feedback(update, self.error_feedback)
        acc = _inputs(update, memory, feedback)
        scales = {k: float(a.abs().mean()) if a.numel() else 0.0 for k, a in acc.items()}
        out = encoded(update, "sign", encode_sign(_like(update.state, acc), scales))
        if feedback:
            _remember(memory, acc, out)
        return out


COMPRESSORS: Registry[Callable[..., Transform]] = Registry("compressor")
"""The transforms a ``[[compression]]`` table may name (each is also in ``TRANSFORMS``)."""
for _name, _factory in (
    ("fp16", Fp16),
    ("topk", TopK),
    ("randk", RandK),
    ("qsgd", QSGD),
    ("stc", STC),
    ("signsgd", SignSGD),
):
    COMPRESSORS.add(_name, _factory)
    TRANSFORMS.add(_name, _factory)

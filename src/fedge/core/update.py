"""Model states and the updates devices, edges and clouds exchange.

A ModelState maps parameter and buffer names to tensors. Helpers here return new
objects and never mutate their inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

ModelState = dict[str, torch.Tensor]
UpdateKind = Literal["state", "delta"]


@dataclass(frozen=True)
class Encoding:
    """How an update travels: a codec's name and its wire tree (tensors and plain values).

    The update's ``state`` is always ``decode(data)`` exactly, so a node that receives the
    object in-process and one that decodes it from bytes see the same numbers.
    """

    codec: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Work:
    """Work behind an update, for the cost model: samples seen and FLOPs spent."""

    samples: int = 0
    flops: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.samples + other.samples, self.flops + other.flops)


@dataclass(frozen=True)
class Update:
    """A model state (or delta) from one participant with its aggregation weight.

    ``origin`` is the node that produced it; ``via`` the node that received it when that
    differs (a handed-over update keeps its origin edge here).
    """

    state: ModelState
    weight: float = 1.0
    kind: UpdateKind = "state"
    metrics: Mapping[str, float] = field(default_factory=dict)
    work: Work = field(default_factory=Work)
    origin: str = ""
    via: str = ""
    round: int = 0
    encoding: Encoding | None = None
    """The wire form; None is the dense form (every tensor as it is)."""

    def with_state(self, state: ModelState, kind: UpdateKind | None = None) -> Update:
        """The same update with another state (and kind); its encoding no longer applies."""
        return replace(self, state=state, kind=kind or self.kind, encoding=None)

    def nbytes(self) -> int:
        return state_nbytes(self.state)


def state_nbytes(state: Mapping[str, torch.Tensor]) -> int:
    """Raw tensor bytes of a state (no framing)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def clone_state(state: Mapping[str, torch.Tensor]) -> ModelState:
    return {k: v.detach().clone() for k, v in state.items()}


def float_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of floating-point entries (integer buffers such as BN counters are not averaged)."""
    return [k for k, v in state.items() if v.is_floating_point()]


def delta(new: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor]) -> ModelState:
    """new - old for floating entries; integer entries are copied from ``new``."""
    return {k: (v - old[k]) if v.is_floating_point() else v.clone() for k, v in new.items()}


def apply_delta(base: Mapping[str, torch.Tensor], d: Mapping[str, torch.Tensor]) -> ModelState:
    """base + d for floating entries; integer entries are taken from ``d``."""
    return {k: (v + d[k]) if v.is_floating_point() else d[k].clone() for k, v in base.items()}


def flatten(state: Mapping[str, torch.Tensor], keys: Sequence[str] | None = None) -> torch.Tensor:
    """Concatenate the (floating) entries into one float64 vector, in key order."""
    ks = list(keys) if keys is not None else float_keys(state)
    if not ks:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([state[k].detach().reshape(-1).to(torch.float64) for k in ks])


def unflatten(
    vector: torch.Tensor, like: Mapping[str, torch.Tensor], keys: Sequence[str] | None = None
) -> ModelState:
    """Inverse of ``flatten``: entries not in ``keys`` are copied from ``like``."""
    ks = list(keys) if keys is not None else float_keys(like)
    out: ModelState = {k: v.clone() for k, v in like.items()}
    offset = 0
    for k in ks:
        n = like[k].numel()
        out[k] = vector[offset : offset + n].reshape(like[k].shape).to(like[k].dtype)
        offset += n
    return out


def as_state(update: Update, base: Mapping[str, torch.Tensor]) -> ModelState:
    """A received update as a model: its state, or ``base`` + its delta.

    A delta was computed from the model its sender received; a receiver that holds another
    model (an edge taking a vehicle handed over from a neighbour) applies it to its own.
    """
    return update.state if update.kind == "state" else apply_delta(base, update.state)

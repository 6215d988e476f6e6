"""Magnitude pruning masks and the DPMN neighbour regulariser (SPEC §3E).

A mask maps parameter names to boolean tensors of the same shape (True = kept). Keys a
mask does not mention are dense: every helper here treats them as all-True. Helpers return
new objects and never mutate their inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from fedge.core.errors import ConfigError
from fedge.core.update import ModelState, float_keys

Mask = dict[str, torch.Tensor]


def prunable_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Floating tensors with dim >= 2 (weight matrices, conv kernels); biases/buffers stay dense."""
    return [k for k in float_keys(state) if state[k].dim() >= 2]


def _check_sparsity(sparsity: float, field: str = "sparsity") -> None:
    if not (isinstance(sparsity, int | float) and 0.0 <= sparsity < 1.0):
        raise ConfigError(field, sparsity, "a number in [0, 1)")


def _tensor_mask(t: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the n - round(sparsity·n) largest |w|; equal |w| keep the lower flat index."""
    flat = t.detach().reshape(-1).abs()
    n = flat.numel()
    keep = n - round(sparsity * n)
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:keep]] = True
    return mask.reshape(t.shape)


def magnitude_mask(
    state: Mapping[str, torch.Tensor], sparsity: float, keys: Sequence[str] | None = None
) -> Mask:
    """Per-tensor magnitude mask over ``keys`` (default: ``prunable_keys``), pruning a
    ``sparsity`` fraction of each tensor (to within half an element)."""
    _check_sparsity(sparsity)
    ks = list(keys) if keys is not None else prunable_keys(state)
    for k in ks:
        if k not in state or not state[k].is_floating_point():
            raise ConfigError("pruning.keys", k, "names of floating-point entries of the state")
    return {k: _tensor_mask(state[k], float(sparsity)) for k in ks}


def adaptive_sparsity(round: int, rounds: int, target: float, warmup: int = 0) -> float:
    """Zhu & Gupta (2017) cubic ramp s_t = target·(1 − (1 − p)^3), p = progress in [0, 1].

    Rounds count from 0: dense until ``warmup``, then ramping so the last round
    (``rounds − 1``) and every later one prune exactly ``target``.
    """
    _check_sparsity(target, "pruning.target")
    if rounds < 1:
        raise ConfigError("rounds", rounds, "an integer >= 1")
    if warmup < 0:
        raise ConfigError("pruning.warmup", warmup, "an integer >= 0")
    if round >= rounds - 1:
        return float(target)
    if round < warmup:
        return 0.0
    progress = (round - warmup) / (rounds - 1 - warmup)
    return float(target) * (1.0 - (1.0 - progress) ** 3)


def apply_mask(state: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> ModelState:
    """A new state with zeros outside the mask; keys without a mask are copied."""
    out: ModelState = {}
    for k, v in state.items():
        m = mask.get(k)
        out[k] = v.detach().clone() if m is None else torch.where(m, v.detach(), 0).to(v.dtype)
    return out


def mask_overlap(m_i: Mapping[str, torch.Tensor], m_j: Mapping[str, torch.Tensor]) -> Mask:
    """m_ij = m_i AND m_j; a key masked on one side only keeps that side's mask."""
    out: Mask = {}
    for k in dict.fromkeys([*m_i, *m_j]):
        if k in m_i and k in m_j:
            out[k] = m_i[k] & m_j[k]
        else:
            out[k] = (m_i[k] if k in m_i else m_j[k]).clone()
    return out


def mask_density(mask: Mapping[str, torch.Tensor]) -> float:
    """Kept fraction over the masked tensors (1.0 for an empty mask)."""
    total = sum(m.numel() for m in mask.values())
    if total == 0:
        return 1.0
    return sum(int(m.sum()) for m in mask.values()) / total


def _masked_sq_dist(
    x_i: Mapping[str, torch.Tensor],
    x_j: Mapping[str, torch.Tensor],
    m_ij: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    u = torch.zeros((), dtype=torch.float64)
    for k in float_keys(x_i):
        diff = x_i[k] - x_j[k].detach().to(x_i[k].dtype)
        m = m_ij.get(k)
        if m is not None:
            diff = diff * m.to(diff.dtype)
        u = u + diff.to(torch.float64).pow(2).sum()
    return u


def regulariser(
    x_i: Mapping[str, torch.Tensor],
    x_j: Mapping[str, torch.Tensor],
    m_ij: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """J(‖m_ij ∘ (x_i − x_j)‖²) with J(u) = 1 − e^(−u), a float64 scalar differentiable in x_i.

    Summed over the floating keys of x_i; x_j is treated as a constant.
    """
    u = _masked_sq_dist(x_i, x_j, m_ij)
    return 1.0 - torch.exp(-u)


def regulariser_grad(
    x_i: Mapping[str, torch.Tensor],
    x_j: Mapping[str, torch.Tensor],
    m_ij: Mapping[str, torch.Tensor],
) -> ModelState:
    """Closed-form ∂J/∂x_i = 2·e^(−u)·m_ij ∘ (x_i − x_j), for the floating keys of x_i."""
    with torch.no_grad():
        u = _masked_sq_dist(x_i, x_j, m_ij)
        scale = 2.0 * math.exp(-float(u))
        out: ModelState = {}
        for k in float_keys(x_i):
            diff = x_i[k].detach() - x_j[k].detach().to(x_i[k].dtype)
            m = m_ij.get(k)
            if m is not None:
                diff = diff * m.to(diff.dtype)
            out[k] = scale * diff
    return out


class MaskHook:
    """Keeps pruned weights at zero during local training (a ``StepHook``)."""

    def __init__(self, model: torch.nn.Module, mask: Mapping[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        unknown = [k for k in mask if k not in params]
        if unknown:
            raise ConfigError("mask", unknown[:5], "names of the model's parameters")
        self._pairs = [(params[k], m.to(params[k].device)) for k, m in mask.items()]

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        with torch.no_grad():
            for p, m in self._pairs:
                p.mul_(m)


class NeighbourPull:
    """Adds the gradient of λ·h_i, h_i = (1/|S_i|) Σ_j J(‖m_ij ∘ (x_i − x_j)‖²) (a ``StepHook``).

    ``neighbours`` holds (x_j, m_ij) pairs: the neighbour's model and the overlap of the two
    masks (an empty mask means dense). Only the model's parameters take part (buffers such as
    batch-norm statistics do not). Each step adds 2λ/|S_i|·e^(−u_ij)·m_ij ∘ (x_i − x_j) to the
    gradient, the closed form of ``regulariser_grad``, computed on the flattened parameters
    of all neighbours at once (|S_i| × d floats); ``value`` is h_i at the last step.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        neighbours: Sequence[tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]],
        lam: float,
    ) -> None:
        if not (isinstance(lam, int | float) and lam >= 0 and math.isfinite(lam)):
            raise ConfigError("lambda", lam, "a finite number >= 0")
        named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        self._params = [p for _, p in named]
        self._lam = float(lam)
        self.value = 0.0
        if not neighbours or not named:
            self._anchors = self._masks = torch.empty(0)
            return
        ref = named[0][1]
        anchors, masks = [], []
        for x_j, m_ij in neighbours:
            missing = [k for k, p in named if k not in x_j or x_j[k].shape != p.shape]
            if missing:
                raise ConfigError("neighbour model", missing[:5], "the same parameters as own")
            anchors.append(torch.cat([x_j[k].detach().reshape(-1).to(p.dtype) for k, p in named]))
            masks.append(
                torch.cat(
                    [
                        (m_ij[k] if k in m_ij else torch.ones(p.shape, dtype=torch.bool))
                        .reshape(-1)
                        .to(p.dtype)
                        for k, p in named
                    ]
                )
            )
        self._anchors = torch.stack(anchors).to(ref.device)
        self._masks = torch.stack(masks).to(ref.device)

    def before_step(self) -> None:
        if not len(self._anchors) or self._lam == 0.0:
            return
        with torch.no_grad():
            x = torch.cat([p.detach().reshape(-1) for p in self._params])
            diffs = torch.sub(x, self._anchors).mul_(self._masks)
            weights = torch.exp(-torch.linalg.vector_norm(diffs, dim=1).pow(2))
            scale = 2.0 * self._lam / len(self._anchors)
            grad = (weights @ diffs).mul_(scale)
            offset = 0
            for p in self._params:
                g = grad[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.add_(g)
        self.value = float((1.0 - weights).mean())

    def after_step(self) -> None:
        pass

"""Clipping and Gaussian noise on model states: the arithmetic of differential privacy that
the server stages (``fedge.aggregation.privacy``) and the device's local-DP transform
(``fedge.transforms.privacy``) share. Floating entries only; computed in float64."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from fedge.core.update import ModelState, float_keys


def l2_norm(state: Mapping[str, torch.Tensor]) -> float:
    """L2 norm over the floating entries, computed in float64."""
    total = 0.0
    for key in float_keys(state):
        total += float(state[key].detach().to(torch.float64).pow(2).sum())
    return math.sqrt(total)


def clip_state(state: ModelState, clip: float) -> tuple[ModelState, float]:
    """``state`` scaled to L2 norm at most ``clip`` (unchanged at or below it), and its norm.
    A scaled state stays in float64, so rounding to a narrower dtype cannot push it back
    over the norm; whoever sends it on casts it after noise is added (post-processing)."""
    norm = l2_norm(state)
    if norm <= clip:
        return state, norm
    scale = clip / norm
    out = {k: v.to(torch.float64) * scale if v.is_floating_point() else v for k, v in state.items()}
    return out, norm


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A torch generator seeded from ``rng`` (one draw), for Gaussian noise on tensors."""
    return torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))


def gaussian_like(
    state: Mapping[str, torch.Tensor], std: float, gen: torch.Generator
) -> ModelState:
    """Independent N(0, std²) noise (float64) for every floating entry of ``state``."""
    return {
        k: torch.randn(state[k].shape, generator=gen, dtype=torch.float64) * std
        for k in float_keys(state)
    }

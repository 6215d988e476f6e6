"""Model poisoning used to evaluate defences: pure functions over model states."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedge.core.errors import ConfigError
from fedge.core.update import ModelState

POISON_MODES = ("random", "scaled")


def poison_state(
    state: Mapping[str, torch.Tensor], mode: str, scale: float, rng: np.random.Generator
) -> ModelState:
    """A poisoned copy of ``state``: ``random`` replaces every floating tensor by Gaussian
    noise of ``scale`` times its own standard deviation; ``scaled`` multiplies it by
    ``scale`` (a boosted or sign-flipped model). Integer buffers are kept."""
    if mode not in POISON_MODES:
        raise ConfigError("federation.malicious_mode", mode, "one of " + ", ".join(POISON_MODES))
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    out: ModelState = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value.clone()
        elif mode == "scaled":
            out[key] = value * scale
        else:
            std = float(value.float().std()) if value.numel() > 1 else 1.0
            noise = torch.randn(value.shape, generator=gen, dtype=torch.float32)
            out[key] = (noise * scale * (std or 1.0)).to(value.dtype)
    return out

"""Local differential privacy: the device clips its update and adds Gaussian noise before it
leaves (``privacy.mechanism = "local"``), so no server, edge or eavesdropper sees more.

Order on the device's uplink: the delta from the model it received -> clip to L2 norm
``clip`` -> add N(0, (noise_multiplier·clip)²) per coordinate -> the link's compressors, if
any (compression after the noise is post-processing and costs no privacy; compressing first
would let the noise scale depend on the compressor). The build puts this transform first on
the device's uplink.

Each release is a Gaussian mechanism on the device's own data: two datasets of a device can
give updates that differ by up to 2·clip, so one release has noise multiplier
``noise_multiplier / 2`` for the accountant, with no amplification by sampling (the device
knows it was asked). ``memory["releases"]`` counts the device's releases (its node state:
checkpoints carry it); every update carries the count in ``metrics["dp_releases"]`` so the
aggregator can report the ε of the device that released most.

It is configured by ``[privacy]`` (``mechanism = "local"``), not as a ``[[compression]]``
entry, so that no release goes unaccounted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedge.core.errors import ConfigError, FedgeError
from fedge.core.noise import clip_state, gaussian_like, torch_generator
from fedge.core.update import Update

RELEASES = "dp_releases"


class LocalGaussian:
    """Clip the delta to ``clip`` and add Gaussian noise of std ``noise_multiplier·clip``."""

    def __init__(self, clip: float = 1.0, noise_multiplier: float = 1.0) -> None:
        if isinstance(clip, bool) or not isinstance(clip, int | float) or not clip > 0:
            raise ConfigError("clip", clip, "a number > 0")
        bad = isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, int | float)
        if bad or not noise_multiplier >= 0:
            raise ConfigError("noise_multiplier", noise_multiplier, "a number >= 0")
        self.clip = float(clip)
        self.noise_multiplier = float(noise_multiplier)

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        if update.kind != "delta":
            raise FedgeError(
                "local DP clips the update's delta from the model the device received; this "
                "request carried no model"
            )
        clipped, _ = clip_state(dict(update.state), self.clip)
        noise = gaussian_like(clipped, self.noise_multiplier * self.clip, torch_generator(rng))
        noisy = {
            k: (v.to(torch.float64) + noise[k]).to(update.state[k].dtype) if k in noise else v
            for k, v in clipped.items()
        }
        memory["releases"] = int(memory.get("releases", 0)) + 1
        metrics = {**update.metrics, RELEASES: float(memory["releases"])}
        return Update(
            noisy,
            update.weight,
            "delta",
            metrics,
            update.work,
            update.origin,
            update.via,
            update.round,
        )

"""Early-exit inference at the edge (BranchyNet style, SPEC §6): accuracy vs exits vs latency.

A trained split model (``SplitModel``: edge head, early-exit head, cloud tail, and for
U-shaped models the last block on the edge) answers a sample at the edge when the exit
head's softmax entropy H = −Σ p·ln p (nats) is below a threshold τ, else it sends the cut
feature map to the cloud, which finishes the forward pass. τ = 0 never exits (H >= 0:
everything goes to the cloud, the full model's accuracy); τ > ln(classes) always exits (the
exit head's accuracy).

Cost model of one sample (``ExitCosts``), forward FLOPs only:

- every sample: edge compute of head + exit head, ``(head + exit) / edge FLOP/s`` (the exit
  head must run to decide);
- a sample that does not exit also pays the round trip to the cloud: the cut feature map up
  the WAN (``latency + 8·feature_bytes / bandwidth``), the tail on the cloud
  (``tail / cloud FLOP/s``), the answer back (``latency + 8·return_bytes / bandwidth``: the
  logits, or for U-shaped models the body's output) and, U-shaped, the last block on the edge.

So the mean latency at τ is ``edge_s + (1 − exit_fraction)·cloud_s``: linear in the exit
fraction between the cloud-only end (τ = 0) and the edge-only end. No queueing, no batching.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedge.learning.data import ArrayDataset
from fedge.learning.profiler import profile
from fedge.learning.split import SplitModel, feature_shape

DEFAULT_THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5)
"""Entropy thresholds in nats; ``default_thresholds`` adds one that always exits."""
BYTES_PER_ELEMENT = 4
"""float32 feature maps and logits, as the profiler counts them."""


@dataclass(frozen=True)
class ExitCosts:
    """Per-sample forward FLOPs, transferred bytes and the hardware they run on."""

    head_flops: float
    exit_flops: float
    tail_flops: float
    feature_bytes: float
    """The cut feature map (the raw input at cut 0)."""
    return_bytes: float
    """What the cloud returns: the logits, or (U-shaped) the body's output."""
    edge_flops_per_s: float
    cloud_flops_per_s: float
    wan_bandwidth_bps: float
    wan_latency_s: float
    """One-way WAN latency."""
    last_flops: float = 0.0
    """U-shaped: the last block, run on the edge after the cloud's answer."""

    @property
    def edge_s(self) -> float:
        """Head + exit head on the edge: paid by every sample."""
        return (self.head_flops + self.exit_flops) / self.edge_flops_per_s

    @property
    def cloud_s(self) -> float:
        """The round trip to the cloud and the rest of the model: paid by the non-exited."""
        up = self.wan_latency_s + 8.0 * self.feature_bytes / self.wan_bandwidth_bps
        down = self.wan_latency_s + 8.0 * self.return_bytes / self.wan_bandwidth_bps
        compute = self.tail_flops / self.cloud_flops_per_s + self.last_flops / self.edge_flops_per_s
        return up + compute + down

    def mean_latency_s(self, exit_fraction: float) -> float:
        return self.edge_s + (1.0 - exit_fraction) * self.cloud_s


@dataclass(frozen=True)
class ExitScores:
    """Per test sample: the exit head's entropy and whether each answer is right."""

    entropy: np.ndarray
    exit_correct: np.ndarray
    full_correct: np.ndarray


@dataclass(frozen=True)
class ExitPoint:
    """One threshold of the curve (``early_exit.json`` rows)."""

    threshold: float
    exit_fraction: float
    accuracy: float
    latency_ms: float


def _forward_flops(module: nn.Module, shape: tuple[int, ...]) -> float:
    if not list(module.children()):
        return 0.0
    return float(profile(module, shape).flops_forward)


def exit_costs(
    parts: SplitModel,
    input_shape: Sequence[int],
    n_classes: int,
    edge_flops_per_s: float,
    cloud_flops_per_s: float,
    wan_bandwidth_bps: float,
    wan_latency_s: float,
) -> ExitCosts:
    """The cost model of ``parts`` from the profiler's forward FLOPs and the cut's shapes."""
    shape = tuple(int(s) for s in input_shape)
    cut = feature_shape(parts.head, shape)
    body = feature_shape(parts.tail, cut)
    returned = math.prod(body) if parts.last is not None else n_classes
    return ExitCosts(
        head_flops=_forward_flops(parts.head, shape),
        exit_flops=_forward_flops(parts.exit, cut),
        tail_flops=_forward_flops(parts.tail, cut),
        feature_bytes=float(BYTES_PER_ELEMENT * math.prod(cut)),
        return_bytes=float(BYTES_PER_ELEMENT * returned),
        edge_flops_per_s=edge_flops_per_s,
        cloud_flops_per_s=cloud_flops_per_s,
        wan_bandwidth_bps=wan_bandwidth_bps,
        wan_latency_s=wan_latency_s,
        last_flops=_forward_flops(parts.last, body) if parts.last is not None else 0.0,
    )


def exit_scores(parts: SplitModel, data: ArrayDataset, batch_size: int = 256) -> ExitScores:
    """Run the edge model (head + exit) and the full model over ``data`` in eval mode."""
    modules = [parts.full, *parts.edge_modules()]
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    entropy, exit_ok, full_ok = [], [], []
    try:
        with torch.no_grad():
            xs, ys = data.x, data.y  # read once: an index view gathers on each read
            for start in range(0, len(data), batch_size):
                x = xs[start : start + batch_size]
                y = ys[start : start + batch_size]
                logits = parts.exit(parts.head(x))
                logp = F.log_softmax(logits, dim=1)
                entropy.append((-(logp.exp() * logp).sum(dim=1)).clamp_min(0.0))
                exit_ok.append(logits.argmax(dim=1) == y)
                full_ok.append(parts.full(x).argmax(dim=1) == y)
    finally:
        for m, w in zip(modules, was, strict=True):
            m.train(w)

    def cat(ts: list[torch.Tensor]) -> np.ndarray:
        return torch.cat(ts).numpy() if ts else np.zeros(0)

    return ExitScores(cat(entropy).astype(float), cat(exit_ok), cat(full_ok))


def exit_curve(
    scores: ExitScores, thresholds: Sequence[float], costs: ExitCosts
) -> list[ExitPoint]:
    """Exit fraction, accuracy and mean latency per threshold (a sample exits iff H < τ)."""
    n = len(scores.entropy)
    out = []
    for tau in thresholds:
        exits = scores.entropy < tau
        right = np.where(exits, scores.exit_correct, scores.full_correct)
        fraction = float(exits.mean()) if n else 0.0
        accuracy = float(right.mean()) if n else math.nan
        latency_ms = 1e3 * costs.mean_latency_s(fraction)
        out.append(ExitPoint(float(tau), fraction, accuracy, latency_ms))
    return out


def default_thresholds(n_classes: int) -> list[float]:
    """``DEFAULT_THRESHOLDS`` then one just above ln(classes): every sample exits."""
    always = math.ceil(100 * math.log(max(n_classes, 2))) / 100 + 0.01
    return [t for t in DEFAULT_THRESHOLDS if t < always] + [always]


def early_exit(
    parts: SplitModel,
    data: ArrayDataset,
    thresholds: Sequence[float],
    costs: ExitCosts,
    batch_size: int = 256,
) -> list[ExitPoint]:
    """``exit_curve`` of ``parts`` on ``data``."""
    return exit_curve(exit_scores(parts, data, batch_size), thresholds, costs)

"""Byzantine-robust aggregators: coordinate median, trimmed mean, Krum, Multi-Krum, clipping.

Each works on the floating entries flattened to one float64 vector per update, so states
and deltas alike; integer buffers take the element-wise max. Ties go to the lowest index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedge.aggregation.mean import (
    AGGREGATORS,
    AggregationError,
    check_states,
    check_updates,
    max_buffer,
    weighted_mean,
)
from fedge.core.errors import ConfigError
from fedge.core.update import ModelState, Update, clone_state, flatten, float_keys, unflatten


def _stack(updates: Sequence[Update]) -> tuple[torch.Tensor, ModelState]:
    """(n × d float64 matrix of the floating entries, template state with max'd buffers)."""
    check_updates(updates)
    states = [u.state for u in updates]
    like = dict(states[0])
    for key, tensor in states[0].items():
        if not tensor.is_floating_point():
            like[key] = max_buffer([s[key] for s in states])
    keys = float_keys(like)
    return torch.stack([flatten(s, keys) for s in states]), like


@AGGREGATORS.register("median")
def median(updates: Sequence[Update], rng: np.random.Generator) -> ModelState:
    """Coordinate-wise median (Yin et al. 2018), unweighted; even n: mean of the two middles."""
    x, like = _stack(updates)
    n = x.shape[0]
    middle = torch.sort(x, dim=0).values[(n - 1) // 2 : n // 2 + 1]
    return unflatten(middle.mean(dim=0), like)


@AGGREGATORS.register("trimmed_mean")
def trimmed_mean(
    updates: Sequence[Update], rng: np.random.Generator, trim_ratio: float = 0.1
) -> ModelState:
    """Coordinate-wise trimmed mean (Yin et al. 2018), unweighted: drop ⌊β·n⌋ from each end."""
    if not 0.0 <= trim_ratio < 0.5:
        raise ConfigError("trimmed_mean.trim_ratio", trim_ratio, "0 <= trim_ratio < 0.5")
    x, like = _stack(updates)
    n = x.shape[0]
    k = math.floor(trim_ratio * n + 1e-9)  # 1e-9 absorbs products such as 0.29 * 100
    kept = torch.sort(x, dim=0).values[k : n - k]
    return unflatten(kept.mean(dim=0), like)


def _check_byzantine(n: int, n_byzantine: int, owner: str) -> None:
    if isinstance(n_byzantine, bool) or not isinstance(n_byzantine, int) or n_byzantine < 0:
        raise ConfigError(f"{owner}.n_byzantine", n_byzantine, "an integer >= 0")
    if n <= 2 * n_byzantine + 2:
        allowed = (
            f"at most {(n - 3) // 2} with {n} updates (Krum needs n > 2·n_byzantine + 2)"
            if n >= 3
            else f"none: Krum needs at least 3 updates, got {n}"
        )
        raise ConfigError(f"{owner}.n_byzantine", n_byzantine, allowed)


def krum_scores(vectors: torch.Tensor, n_byzantine: int) -> torch.Tensor:
    """Blanchard et al. 2017: each row's sum of squared distances to its n−f−2 closest rows.

    A NaN score (an update holding NaN) counts as +inf so that it is never chosen.
    """
    n = vectors.shape[0]
    _check_byzantine(n, n_byzantine, "krum")
    x = vectors.to(torch.float64)
    dist = torch.stack([((x - x[i]) ** 2).sum(dim=1) for i in range(n)])
    dist.fill_diagonal_(math.inf)
    closest = torch.sort(dist, dim=1).values[:, : n - n_byzantine - 2]
    return torch.nan_to_num(closest.sum(dim=1), nan=math.inf)


def _ranking(updates: Sequence[Update], n_byzantine: int) -> list[int]:
    """Update indices from best (lowest) Krum score to worst; ties by lowest index."""
    x, _ = _stack(updates)
    scores = krum_scores(x, n_byzantine).numpy()
    return [int(i) for i in np.argsort(scores, kind="stable")]


@AGGREGATORS.register("krum")
def krum(updates: Sequence[Update], rng: np.random.Generator, n_byzantine: int = 1) -> ModelState:
    """Krum (Blanchard et al. 2017): the single update with the lowest score, unchanged."""
    best = _ranking(updates, n_byzantine)[0]
    return clone_state(updates[best].state)


@AGGREGATORS.register("multikrum")
def multikrum(
    updates: Sequence[Update],
    rng: np.random.Generator,
    n_byzantine: int = 1,
    m: int | None = None,
) -> ModelState:
    """Multi-Krum: mean, weighted by ``update.weight``, of the m best-scored (default n − f)."""
    check_updates(updates)
    n = len(updates)
    _check_byzantine(n, n_byzantine, "multikrum")
    count = n - n_byzantine if m is None else m
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= n:
        raise ConfigError("multikrum.m", m, f"an integer in [1, {n}] or None for n − n_byzantine")
    chosen = sorted(_ranking(updates, n_byzantine)[:count])
    return weighted_mean([updates[i].state for i in chosen], [updates[i].weight for i in chosen])


def _check_max_norm(max_norm: float) -> None:
    if isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or not max_norm > 0:
        raise ConfigError("clip.max_norm", max_norm, "a number > 0")


def _clip_one(
    update: Update, max_norm: float, reference: Mapping[str, torch.Tensor] | None
) -> Update:
    keys = float_keys(update.state)
    vec = flatten(update.state, keys)
    base = torch.zeros_like(vec)
    if update.kind == "state":
        if reference is None:
            raise AggregationError("clipping a 'state' update needs a reference state")
        check_states([update.state, reference])
        base = flatten(reference, keys)
    diff = vec - base
    norm = float(torch.linalg.vector_norm(diff))
    if norm > max_norm:
        diff = diff * (max_norm / norm)
    return update.with_state(unflatten(base + diff, update.state, keys))


def clip_by_norm(
    updates: Sequence[Update],
    max_norm: float,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> list[Update]:
    """Scale each delta (or state − reference) to L2 norm ≤ ``max_norm``; new updates.

    Deltas ignore ``reference``; "state" updates require it (typically the global model).
    """
    _check_max_norm(max_norm)
    return [_clip_one(u, max_norm, reference) for u in updates]


@AGGREGATORS.register("clipped_mean")
def clipped_mean(
    updates: Sequence[Update],
    rng: np.random.Generator,
    max_norm: float,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> ModelState:
    """Norm-bounded FedAvg (Sun et al. 2019): clip every update, then the weighted mean."""
    check_updates(updates)
    clipped = clip_by_norm(updates, max_norm, reference)
    return weighted_mean([u.state for u in clipped], [u.weight for u in clipped])

"""Neighbour selection for decentralized personalized learning (SPEC §3E).

DPMN picks peers whose model *update* is cosine-similar to one's own; the baselines pick by
Euclidean distance of the models (DPCG), at random (DPMN-R) or everyone (DPMP, DFL). Vectors
are ``core.update.flatten`` over the floating keys of one's own state, so peers must share
those keys. Results never include ids the caller did not pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from fedge.core.errors import ConfigError
from fedge.core.update import ModelState, flatten, float_keys


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the angle between two vectors; 0.0 when either is the zero vector."""
    norm = float(torch.linalg.vector_norm(a)) * float(torch.linalg.vector_norm(b))
    if norm == 0.0:
        return 0.0
    return max(-1.0, min(1.0, float(torch.dot(a, b)) / norm))


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError("neighbours.k", k, "an integer >= 0")


def _vectors(
    own: Mapping[str, torch.Tensor], peers: Mapping[str, ModelState]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    keys = float_keys(own)
    for pid, state in peers.items():
        missing = [k for k in keys if k not in state or state[k].shape != own[k].shape]
        if missing:
            raise ConfigError(f"peer {pid!r} state", missing, "the same keys and shapes as own")
    return flatten(own, keys), {pid: flatten(s, keys) for pid, s in peers.items()}


def cosine_neighbours(
    own_delta: Mapping[str, torch.Tensor],
    peer_deltas: Mapping[str, ModelState],
    delta_threshold: float = 0.2,
) -> list[str]:
    """DPMN: peers whose update has cosine similarity >= δ with ``own_delta``, most similar
    first, ties by id. A zero update has similarity 0 with everything."""
    if not -1.0 <= delta_threshold <= 1.0:
        raise ConfigError("neighbours.delta_threshold", delta_threshold, "a number in [-1, 1]")
    return above_threshold(cosine_scores(own_delta, peer_deltas), delta_threshold)


def cosine_scores(
    own: Mapping[str, torch.Tensor], peers: Mapping[str, ModelState]
) -> dict[str, float]:
    """Each peer's cosine similarity with ``own`` over the floating keys of ``own``."""
    mine, theirs = _vectors(own, peers)
    return {pid: cosine_similarity(mine, v) for pid, v in theirs.items()}


def above_threshold(sims: Mapping[str, float], delta_threshold: float) -> list[str]:
    """The ids whose similarity is >= δ, most similar first, ties by id."""
    chosen = [pid for pid, s in sims.items() if s >= delta_threshold]
    return sorted(chosen, key=lambda pid: (-sims[pid], pid))


def euclidean_neighbours(
    own: Mapping[str, torch.Tensor], peers: Mapping[str, ModelState], k: int
) -> list[str]:
    """DPCG: the ``k`` peers whose models are closest in Euclidean distance, ties by id."""
    _check_k(k)
    mine, theirs = _vectors(own, peers)
    dist = {pid: float(torch.linalg.vector_norm(v - mine)) for pid, v in theirs.items()}
    return sorted(dist, key=lambda pid: (dist[pid], pid))[:k]


def random_neighbours(peers: Sequence[str], k: int, rng: np.random.Generator) -> list[str]:
    """DPMN-R: ``min(k, len(peers))`` distinct peers drawn uniformly with ``rng``, sorted by id.

    The draw is over the sorted ids, so the result depends only on the set and the rng.
    """
    _check_k(k)
    pool = sorted(set(peers))
    if not pool or k == 0:
        return []
    picks = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return sorted(pool[int(i)] for i in picks)


def all_neighbours(peers: Iterable[str]) -> list[str]:
    """DPMP / DFL: every peer, sorted by id."""
    return sorted(set(peers))

"""Item similarity and the soft-hit model.

Similarity is the cosine of two items' feature vectors, clipped to [0, 1] (features are
nonnegative for genres, so the clip only matters for signed features). For a requested
item i the edge considers its ``rec_list`` most similar other items with similarity ≥ θ,
most similar first; it recommends the first of them that it holds, and the user accepts
with probability exp(-β · (1 - s)), s the similarity (β = ``accept_decay``): 1 for an
identical item, falling with dissimilarity. At θ = 1 only items with identical features
qualify (none on continuous features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
_CHUNK = 1024


def unit_rows(features: FloatArray) -> FloatArray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(features, axis=1, keepdims=True)
    out: FloatArray = features / np.where(norm > 0, norm, 1.0)
    return out


def similarity(features: FloatArray, a: int, b: int) -> float:
    """Cosine similarity of items ``a`` and ``b`` clipped to [0, 1]."""
    u = unit_rows(features[[a, b]])
    return float(np.clip(u[0] @ u[1], 0.0, 1.0))


@dataclass(frozen=True)
class Neighbours:
    """Per item, its candidate substitutes: ``items[i, :]`` (padded with -1) and their
    similarities ``sims[i, :]``, most similar first, all ≥ θ."""

    items: IntArray
    sims: FloatArray

    def of(self, item: int) -> list[tuple[int, float]]:
        """(substitute, similarity) pairs of ``item``."""
        row = self.items[item]
        return [(int(j), float(s)) for j, s in zip(row, self.sims[item], strict=True) if j >= 0]


def neighbours(features: FloatArray, theta: float, k: int) -> Neighbours:
    """The ``k`` most similar other items of every item with similarity ≥ ``theta`` (chunked
    matrix products, so memory stays O(chunk · M))."""
    m = features.shape[0]
    k = min(k, m - 1)
    items = np.full((m, max(k, 0)), -1, dtype=np.int64)
    sims = np.zeros((m, max(k, 0)))
    if k <= 0:
        return Neighbours(items, sims)
    unit = unit_rows(features.astype(np.float64))
    for lo in range(0, m, _CHUNK):
        hi = min(lo + _CHUNK, m)
        s = np.clip(unit[lo:hi] @ unit.T, 0.0, 1.0)
        s[np.arange(hi - lo), np.arange(lo, hi)] = -1.0  # never an item's own substitute
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ts = np.take_along_axis(s, top, axis=1)
        order = np.lexsort((top, -ts), axis=1)
        top, ts = np.take_along_axis(top, order, 1), np.take_along_axis(ts, order, 1)
        ok = ts >= theta
        items[lo:hi] = np.where(ok, top, -1)
        sims[lo:hi] = np.where(ok, ts, 0.0)
    return Neighbours(items, sims)


def acceptance(sim: FloatArray | float, decay: float) -> FloatArray:
    """Probability that a user accepts a substitute of similarity ``sim``."""
    out: FloatArray = np.exp(-decay * (1.0 - np.asarray(sim, dtype=np.float64)))
    return out

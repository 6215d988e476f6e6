"""Proactive placement from predicted demand: the cache is refilled at refresh times and
does not admit on a miss.

- ``fpcc`` (popularity prediction, FPCC-style): the ``capacity`` items of highest predicted
  demand.
- ``rec_aware``: the set S of ``capacity`` items that maximises the expected direct plus
  accepted soft hits, Σ_i d_i · max(1[i ∈ S], max_{j ∈ S ∩ cand(i)} a(s_ij)), d the
  predicted demand, cand(i) the soft-hit candidates of i and a the acceptance probability.
  The objective is monotone submodular (a weighted coverage); the greedy choice, one item at a
  time by largest marginal gain, is within 1 - 1/e of the best set.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from fedge.caching.similarity import Neighbours, acceptance


class ProactiveCache:
    """A cache whose content is set by ``place``; ``admit`` does nothing."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._set: set[int] = set()

    def lookup(self, item: int, k: int) -> bool:
        return item in self._set

    def admit(self, item: int, k: int) -> None:
        return None

    def place(self, items: NDArray[np.int64]) -> int:
        """Hold ``items`` (at most capacity); returns how many were not held before (the
        items fetched from the cloud)."""
        new = {int(i) for i in items[: self.capacity]}
        fetched = len(new - self._set)
        self._set = new
        return fetched

    def __contains__(self, item: object) -> bool:
        return item in self._set

    def __iter__(self) -> Iterator[int]:
        return iter(self._set)

    def __len__(self) -> int:
        return len(self._set)


def top_demand(demand: NDArray[np.float64], capacity: int) -> NDArray[np.int64]:
    """fpcc: the ``capacity`` items of highest demand (ties: lower index), most first."""
    order: NDArray[np.int64] = np.lexsort((np.arange(len(demand)), -demand))[:capacity]
    return order


def coverage_matrix(neighbours: Neighbours, decay: float) -> sp.csc_matrix:
    """V[i, j]: the value to a request for i of holding j (1 if j = i, a(s_ij) if j is a
    soft-hit candidate of i, else 0), column-compressed."""
    m, k = neighbours.items.shape
    rows = np.repeat(np.arange(m), k)
    cols = neighbours.items.ravel()
    vals = acceptance(neighbours.sims.ravel(), decay)
    keep = cols >= 0
    rows = np.concatenate([np.arange(m), rows[keep]])
    cols = np.concatenate([np.arange(m), cols[keep]])
    vals = np.concatenate([np.ones(m), vals[keep]])
    return sp.csc_matrix((vals, (rows, cols)), shape=(m, m))


def rec_aware_set(
    demand: NDArray[np.float64], cover: sp.csc_matrix, capacity: int
) -> NDArray[np.int64]:
    """Greedy maximisation of the expected direct + soft hits (see the module docstring)."""
    m = len(demand)
    current = np.zeros(m)
    chosen: list[int] = []
    rows, indptr, data = cover.indices, cover.indptr, cover.data
    col_of = np.repeat(np.arange(m), np.diff(indptr))
    for _ in range(min(capacity, m)):
        gain_entries = demand[rows] * np.maximum(data - current[rows], 0.0)
        gains = np.bincount(col_of, weights=gain_entries, minlength=m)
        gains[chosen] = -1.0
        j = int(np.argmax(gains))
        if gains[j] <= 0 and chosen:
            rest = [i for i in top_demand(demand, m) if i not in set(chosen)]
            chosen += [int(i) for i in rest[: capacity - len(chosen)]]
            break
        chosen.append(j)
        seg = slice(indptr[j], indptr[j + 1])
        current[rows[seg]] = np.maximum(current[rows[seg]], data[seg])
    return np.array(chosen, dtype=np.int64)

"""libCacheSim (PyPI ``libcachesim``, the maintained cache simulator) as the reference for
the classical policies: the hit ratio of one cache of ``capacity`` unit-size objects on an
item stream. The optional extra ``caching`` installs it."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedge.core.errors import FedgeError

INSTALL_HINT = "libcachesim is not installed; pip install 'fedge[caching]'"
_CLASSES = {"fifo": "FIFO", "lru": "LRU", "lfu": "LFU", "belady": "Belady"}


def _library() -> Any:
    try:
        import libcachesim
    except ImportError:
        raise FedgeError(INSTALL_HINT) from None
    return libcachesim


def libcachesim_hits(policy: str, items: NDArray[np.int64], capacity: int) -> NDArray[np.bool_]:
    """Per request, whether libCacheSim's ``policy`` (fifo, lru, lfu, belady) hits."""
    lcs = _library()
    if policy not in _CLASSES:
        raise FedgeError(f"libCacheSim reference: got {policy!r}; allowed: {', '.join(_CLASSES)}")
    cache = getattr(lcs, _CLASSES[policy])(capacity)
    nxt = _next_index(items) if policy == "belady" else None
    req = lcs.Request()
    req.obj_size = 1
    hits = np.zeros(len(items), dtype=bool)
    for k, item in enumerate(items.tolist()):
        req.obj_id = item + 1
        req.clock_time = k
        if nxt is not None:
            req.next_access_vtime = int(nxt[k])
        hits[k] = cache.get(req)
    return hits


def _next_index(items: NDArray[np.int64]) -> NDArray[np.int64]:
    """The next position of each request's item; INT64_MAX when it never comes back
    (libCacheSim's convention for "no next access")."""
    n = len(items)
    out = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    order = np.lexsort((np.arange(n), items))
    same = items[order][1:] == items[order][:-1]
    out[order[:-1][same]] = order[1:][same]
    return out

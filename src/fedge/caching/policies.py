"""Replacement policies of one edge cache holding at most ``capacity`` unit-size items.

The driver asks ``lookup(item, k)`` for the request at trace position ``k`` (True on a
direct hit, which updates the policy's state) and, when the miss was fetched, calls
``admit(item, k)``. ``item in cache`` reads without touching the state (soft-hit and
neighbour look-ups). The classical policies follow libCacheSim's definitions so their hit
ratios match it exactly (``fedge.caching.reference`` checks): FIFO evicts the oldest
insertion; LRU the least recently used; LFU the least frequently used item *while cached*
(counts restart at insertion), ties to the one that reached its count first; perfect LFU
counts every request the edge ever saw and holds the items with the highest counts (a
newcomer enters only with a count above the smallest cached one); Belady evicts the
cached item requested again farthest in the future (it needs ``next_use``: for each trace
position the position of the same item's next request at the same edge). libCacheSim's
Belady always admits the missed item (demand paging); fedge's ``belady`` also *bypasses*: a
newcomer requested again no sooner than every cached item is not admitted. With bypass it is
the offline optimum of direct hits over every policy that holds at most ``capacity`` items,
including those that decline to cache (perfect LFU, the proactive and learned policies);
``Belady(..., bypass=False)`` is libCacheSim's, request for request.
"""

from __future__ import annotations

import heapq
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

NEVER = np.iinfo(np.int64).max


class Cache(Protocol):
    """One edge's cache as the simulation drives it."""

    capacity: int

    def lookup(self, item: int, k: int) -> bool: ...

    def admit(self, item: int, k: int) -> None: ...

    def __contains__(self, item: object) -> bool: ...

    def __iter__(self) -> Iterator[int]: ...

    def __len__(self) -> int: ...


class FIFO:
    """First in, first out."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._set: set[int] = set()
        self._queue: deque[int] = deque()

    def lookup(self, item: int, k: int) -> bool:
        return item in self._set

    def admit(self, item: int, k: int) -> None:
        if len(self._set) >= self.capacity:
            self._set.discard(self._queue.popleft())
        self._set.add(item)
        self._queue.append(item)

    def __contains__(self, item: object) -> bool:
        return item in self._set

    def __iter__(self) -> Iterator[int]:
        return iter(self._queue)

    def __len__(self) -> int:
        return len(self._set)


class LRU:
    """Least recently used."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._od: OrderedDict[int, None] = OrderedDict()

    def lookup(self, item: int, k: int) -> bool:
        if item in self._od:
            self._od.move_to_end(item)
            return True
        return False

    def admit(self, item: int, k: int) -> None:
        if len(self._od) >= self.capacity:
            self._od.popitem(last=False)
        self._od[item] = None

    def __contains__(self, item: object) -> bool:
        return item in self._od

    def __iter__(self) -> Iterator[int]:
        return iter(self._od)

    def __len__(self) -> int:
        return len(self._od)


class LFU:
    """In-cache LFU: frequency buckets, each in the order its items reached the count."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._freq: dict[int, int] = {}
        self._buckets: dict[int, OrderedDict[int, None]] = {}
        self._min = 0

    def lookup(self, item: int, k: int) -> bool:
        f = self._freq.get(item)
        if f is None:
            return False
        bucket = self._buckets[f]
        del bucket[item]
        if not bucket:
            del self._buckets[f]
            if self._min == f:
                self._min = f + 1
        self._freq[item] = f + 1
        self._buckets.setdefault(f + 1, OrderedDict())[item] = None
        return True

    def admit(self, item: int, k: int) -> None:
        if len(self._freq) >= self.capacity:
            bucket = self._buckets[self._min]
            victim, _ = bucket.popitem(last=False)
            if not bucket:
                del self._buckets[self._min]
            del self._freq[victim]
        self._freq[item] = 1
        self._buckets.setdefault(1, OrderedDict())[item] = None
        self._min = 1

    def __contains__(self, item: object) -> bool:
        return item in self._freq

    def __iter__(self) -> Iterator[int]:
        return iter(self._freq)

    def __len__(self) -> int:
        return len(self._freq)


class PerfectLFU:
    """Counts every request the edge saw (cached or not) and keeps the top counts. Each
    cached item has one heap entry holding a count that may lag its true count (hits do not
    touch the heap); the smallest entry is refreshed until it is current, which makes it
    the smallest true count (every other entry is at most its item's count). Ties: the
    entry pushed first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._count: dict[int, int] = {}
        self._cached: set[int] = set()
        self._heap: list[tuple[int, int, int]] = []  # (count when pushed, push order, item)
        self._tick = 0

    def lookup(self, item: int, k: int) -> bool:
        count = self._count
        count[item] = count.get(item, 0) + 1
        return item in self._cached

    def admit(self, item: int, k: int) -> None:
        count, heap = self._count, self._heap
        if len(self._cached) >= self.capacity:
            while heap[0][0] != count[heap[0][2]]:
                stale = heap[0][2]
                self._tick += 1
                heapq.heapreplace(heap, (count[stale], self._tick, stale))
            if count[item] <= heap[0][0]:
                return
            self._cached.discard(heapq.heappop(heap)[2])
        self._cached.add(item)
        self._tick += 1
        heapq.heappush(heap, (count[item], self._tick, item))

    def __contains__(self, item: object) -> bool:
        return item in self._cached

    def __iter__(self) -> Iterator[int]:
        return iter(self._cached)

    def __len__(self) -> int:
        return len(self._cached)


class Belady:
    """Evict the cached item whose next request is farthest away (never: first)."""

    def __init__(self, capacity: int, next_use: NDArray[np.int64], bypass: bool = True) -> None:
        self.capacity = capacity
        self._next = array("q", next_use.astype(np.int64).tobytes())  # fast int indexing
        self.bypass = bypass
        self._at: dict[int, int] = {}
        self._heap: list[tuple[int, int]] = []  # (-next use, item)

    def lookup(self, item: int, k: int) -> bool:
        if item in self._at:
            nxt = self._next[k]
            self._at[item] = nxt
            heapq.heappush(self._heap, (-nxt, item))
            return True
        return False

    def admit(self, item: int, k: int) -> None:
        at = self._at
        nxt = self._next[k]
        if len(at) >= self.capacity:
            heap = self._heap
            while True:
                neg, victim = heapq.heappop(heap)
                if at.get(victim) == -neg:
                    break
            if self.bypass and nxt >= -neg:
                heapq.heappush(heap, (neg, victim))
                return
            del at[victim]
            if len(heap) > 4 * self.capacity + 64:
                self._heap = [(-n, i) for i, n in at.items()]
                heapq.heapify(self._heap)
        at[item] = nxt
        heapq.heappush(self._heap, (-nxt, item))

    def __contains__(self, item: object) -> bool:
        return item in self._at

    def __iter__(self) -> Iterator[int]:
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)


def next_use(edge: NDArray[np.int64], item: NDArray[np.int64]) -> NDArray[np.int64]:
    """For each position, the position of the same item's next request at the same edge
    (NEVER if none), computed with one stable sort."""
    n = len(item)
    order = np.lexsort((np.arange(n), item, edge))
    out = np.full(n, NEVER, dtype=np.int64)
    same = (edge[order][1:] == edge[order][:-1]) & (item[order][1:] == item[order][:-1])
    out[order[:-1][same]] = order[1:][same]
    return out


CacheFactory = Callable[[int, NDArray[np.int64]], Cache]
"""(capacity, next_use) -> a cache; next_use matters to Belady only."""

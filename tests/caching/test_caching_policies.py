"""Replacement policies against independent oracles: libCacheSim (the maintained simulator)
request for request, and a brute-force search of every admit / evict choice for the offline
optimum of direct hits."""

import functools

import numpy as np
import pytest

from fedge.caching.policies import FIFO, LFU, LRU, Belady, PerfectLFU, next_use
from fedge.caching.reference import libcachesim_hits
from fedge.caching.traces import synthetic_trace

CLASSES = {"fifo": FIFO, "lru": LRU, "lfu": LFU, "perfect_lfu": PerfectLFU}


def hits_of(cache, items):
    out = np.zeros(len(items), dtype=bool)
    for k, i in enumerate(items.tolist()):
        if cache.lookup(i, k):
            out[k] = True
        else:
            cache.admit(i, k)
        assert len(cache) <= cache.capacity
    return out


def make(name, capacity, items, bypass=True):
    if name == "belady":
        return Belady(capacity, next_use(np.zeros_like(items), items), bypass=bypass)
    return CLASSES[name](capacity)


@pytest.fixture(scope="module")
def zipf_items():
    rng = np.random.default_rng(3)
    return synthetic_trace(rng, requests=6000, items=300, users=8, alpha=0.8, taste_weight=0.3).item


@pytest.mark.parametrize("capacity", [1, 3, 16, 60])
@pytest.mark.parametrize("policy", ["fifo", "lru", "lfu", "belady"])
def test_classical_policies_hit_exactly_where_libcachesim_hits(zipf_items, policy, capacity):
    pytest.importorskip("libcachesim", reason="needs the caching extra")
    ours = hits_of(make(policy, capacity, zipf_items, bypass=False), zipf_items)
    ref = libcachesim_hits(policy, zipf_items, capacity)
    assert ref.mean() > 0.0
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("capacity", [2, 10, 40])
def test_belady_has_the_most_direct_hits(zipf_items, capacity):
    best = hits_of(make("belady", capacity, zipf_items), zipf_items).sum()
    demand = hits_of(make("belady", capacity, zipf_items, bypass=False), zipf_items).sum()
    others = {p: hits_of(make(p, capacity, zipf_items), zipf_items).sum() for p in CLASSES}
    assert best >= demand and all(best >= h for h in others.values()), (best, others)


def brute_force_optimum(items, capacity):
    """Most hits over every policy that may admit a missed item (evicting any one) or not."""
    items = tuple(items)

    @functools.cache
    def best(k, cached):
        if k == len(items):
            return 0
        i = items[k]
        if i in cached:
            return 1 + best(k + 1, cached)
        options = [best(k + 1, cached)]  # do not cache it
        if len(cached) < capacity:
            options.append(best(k + 1, cached | {i}))
        else:
            options += [best(k + 1, (cached - {v}) | {i}) for v in cached]
        return max(options)

    return best(0, frozenset())


@pytest.mark.parametrize("seed", range(8))
def test_belady_with_bypass_equals_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 5, 14)
    for capacity in (1, 2, 3):
        got = hits_of(make("belady", capacity, items), items).sum()
        assert got == brute_force_optimum(items.tolist(), capacity)


def test_perfect_lfu_keeps_the_most_requested_items():
    items = np.array([0, 0, 0, 1, 1, 2, 3, 2, 2, 2, 1, 0])
    cache = PerfectLFU(2)
    hits = hits_of(cache, items)
    # 2 arrives with count 1, then 2: no more than 1's count 2, so it stays out (ties keep
    # the incumbent); its 3rd request (count 3) is a miss that replaces 1; 1 comes back with
    # count 3, no more than the smallest cached count (0's 3), and stays out.
    assert hits.tolist() == [0, 1, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1]
    assert sorted(cache) == [0, 2]


def test_next_use_is_per_edge():
    edge = np.array([0, 1, 0, 1, 0])
    item = np.array([7, 7, 7, 8, 8])
    never = np.iinfo(np.int64).max
    assert next_use(edge, item).tolist() == [2, never, never, never, never]

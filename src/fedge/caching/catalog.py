"""The caching policies by name (``fedge list caching-policies``; ``caching.policy``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedge.caching.policies import FIFO, LFU, LRU, Belady, CacheFactory, PerfectLFU
from fedge.core.registry import Registry

Kind = Literal["reactive", "fpcc", "rec_aware", "fdrl"]


@dataclass(frozen=True)
class Policy:
    """A policy: ``reactive`` ones are a cache factory driven request by request; ``fpcc``
    and ``rec_aware`` place content from the federated recommender's predictions; ``fdrl``
    is the per-edge DQN agents."""

    kind: Kind
    factory: CacheFactory | None = None


def _accepts(obj: object) -> bool:
    return isinstance(obj, Policy) or callable(obj)


POLICIES: Registry[Policy] = Registry("caching policy", _accepts, "a Policy or cache factory")
POLICIES.add("fifo", Policy("reactive", lambda c, _n: FIFO(c)), "first in, first out")
POLICIES.add("lru", Policy("reactive", lambda c, _n: LRU(c)), "least recently used")
POLICIES.add("lfu", Policy("reactive", lambda c, _n: LFU(c)), "least frequently used while cached")
POLICIES.add(
    "perfect_lfu",
    Policy("reactive", lambda c, _n: PerfectLFU(c)),
    "highest request counts ever seen at the edge",
)
POLICIES.add(
    "belady", Policy("reactive", Belady), "farthest next request (offline optimum, direct hits)"
)
POLICIES.add("fpcc", Policy("fpcc"), "top predicted demand from the federated recommender")
POLICIES.add("rec_aware", Policy("rec_aware"), "greedy set maximising predicted direct + soft hits")
POLICIES.add("fdrl", Policy("fdrl"), "per-edge DQN replacement agents with federated averaging")


def find_policy(name: str, field: str = "caching.policy") -> Policy:
    """The policy ``name`` (or import path to a Policy or cache factory)."""
    found = POLICIES.get(name, field)
    return found if isinstance(found, Policy) else Policy("reactive", found)

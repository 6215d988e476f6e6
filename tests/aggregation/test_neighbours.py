"""Neighbour selection: cosine threshold (DPMN), Euclidean (DPCG), random (DPMN-R), all."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.aggregation.neighbours import (
    all_neighbours,
    cosine_neighbours,
    cosine_similarity,
    euclidean_neighbours,
    random_neighbours,
)
from fedge.core import ConfigError
from fedge.core.update import flatten


def st_of(*values: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float32)}


def random_peers(seed: int, n: int) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    g = torch.Generator().manual_seed(seed)
    own = {"w": torch.randn(3, 2, generator=g), "b": torch.randn(2, generator=g)}
    peers = {
        f"p{i}": {k: torch.randn(v.shape, generator=g) for k, v in own.items()} for i in range(n)
    }
    return own, peers


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 500), n=st.integers(0, 8), lo=st.floats(-1, 1), hi=st.floats(-1, 1))
def test_cosine_threshold_and_monotone_in_delta(seed: int, n: int, lo: float, hi: float) -> None:
    lo, hi = min(lo, hi), max(lo, hi)
    own, peers = random_peers(seed, n)
    low, high = cosine_neighbours(own, peers, lo), cosine_neighbours(own, peers, hi)
    mine = flatten(own)
    sims = [cosine_similarity(mine, flatten(peers[p], ["w", "b"])) for p in low]
    assert all(s >= lo for s in sims)
    assert sims == sorted(sims, reverse=True)
    assert set(high) <= set(low)


def test_cosine_hand_built_ranking_and_zero_vector() -> None:
    own = st_of(1.0, 0.0)
    peers = {
        "same": st_of(2.0, 0.0),
        "also": st_of(5.0, 0.0),
        "diag": st_of(1.0, 1.0),
        "orth": st_of(0.0, 3.0),
        "anti": st_of(-1.0, 0.0),
        "zero": st_of(0.0, 0.0),
    }
    assert cosine_neighbours(own, peers) == ["also", "same", "diag"]
    assert cosine_neighbours(own, peers, 0.0) == ["also", "same", "diag", "orth", "zero"]
    assert cosine_neighbours(st_of(0.0, 0.0), peers) == []
    with pytest.raises(ConfigError, match="delta_threshold"):
        cosine_neighbours(own, peers, 1.5)


def test_euclidean_ranks_by_distance_with_ties_by_id() -> None:
    own = st_of(0.0, 0.0)
    peers = {
        "far": st_of(10.0, 0.0),
        "b": st_of(0.0, 1.0),
        "a": st_of(1.0, 0.0),
        "mid": st_of(3, 4),
    }
    assert euclidean_neighbours(own, peers, 3) == ["a", "b", "mid"]
    assert euclidean_neighbours(own, peers, 10) == ["a", "b", "mid", "far"]
    assert euclidean_neighbours(own, peers, 0) == []
    with pytest.raises(ConfigError, match=r"neighbours\.k"):
        euclidean_neighbours(own, peers, -1)


def test_random_neighbours_reproducible_and_sized() -> None:
    peers = [f"n{i}" for i in range(10)]
    a = random_neighbours(peers, 4, np.random.default_rng(7))
    b = random_neighbours(list(reversed(peers)), 4, np.random.default_rng(7))
    assert a == b and len(a) == 4 and set(a) <= set(peers)
    draws = {tuple(random_neighbours(peers, 4, np.random.default_rng(s))) for s in range(20)}
    assert len(draws) > 1
    assert random_neighbours(peers, 20, np.random.default_rng(0)) == sorted(peers)
    assert random_neighbours([], 3, np.random.default_rng(0)) == []


def test_all_neighbours_is_every_peer() -> None:
    assert all_neighbours(["c", "a", "b", "a"]) == ["a", "b", "c"]


def test_mismatched_peer_state_names_the_peer() -> None:
    with pytest.raises(ConfigError, match="p1"):
        cosine_neighbours(st_of(1.0, 0.0), {"p1": {"v": torch.zeros(2)}})


def test_random_neighbours_take_no_threshold() -> None:
    import inspect

    assert "delta_threshold" not in inspect.signature(random_neighbours).parameters

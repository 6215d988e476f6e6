"""Robust aggregators: outlier resistance, Krum's choice, clipping, hand-checked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.aggregation import (
    AggregationError,
    aggregate,
    clip_by_norm,
    krum_scores,
    weighted_mean,
)
from fedge.core import ConfigError, ModelState, Update
from fedge.core.update import flatten

RNG = np.random.default_rng(0)
ROBUST: list[tuple[str, dict[str, object]]] = [
    ("median", {}),
    ("trimmed_mean", {"trim_ratio": 0.2}),
    ("krum", {"n_byzantine": 1}),
    ("multikrum", {"n_byzantine": 1}),
]


def random_updates(seed: int, n: int, kind: str = "state") -> list[Update]:
    """``n`` updates of a two-tensor state (3×4 and 5), values in [-10, 10], random weights."""
    gen = np.random.default_rng(seed)
    return [
        Update(
            {
                "w": torch.from_numpy(gen.uniform(-10, 10, (3, 4)).astype(np.float32)),
                "b": torch.from_numpy(gen.uniform(-10, 10, 5).astype(np.float32)),
            },
            weight=float(gen.uniform(0.5, 5.0)),
            kind=kind,  # type: ignore[arg-type]
        )
        for _ in range(n)
    ]


def with_outlier(honest: list[Update], at: int) -> list[Update]:
    """Insert a scaled copy (×1e6, shifted) of the first honest update at position ``at``."""
    bad = Update({k: v * 1e6 + 1e6 for k, v in honest[0].state.items()}, weight=honest[0].weight)
    return [*honest[:at], bad, *honest[at:]]


def within_honest_range(result: ModelState, honest: list[Update]) -> bool:
    vec = flatten(result)
    stack = torch.stack([flatten(u.state) for u in honest])
    lo, hi = stack.min(dim=0).values, stack.max(dim=0).values
    return bool(((vec >= lo - 1e-4) & (vec <= hi + 1e-4)).all())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_honest=st.integers(4, 6), at=st.integers(0, 6))
def test_one_outlier_cannot_drag_robust_rules_away(seed: int, n_honest: int, at: int) -> None:
    honest = random_updates(seed, n_honest)
    updates = with_outlier(honest, min(at, n_honest))
    for name, params in ROBUST:
        assert within_honest_range(aggregate(name, updates, RNG, **params), honest), name
    assert not within_honest_range(aggregate("mean", updates, RNG), honest)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_honest=st.integers(4, 6), at=st.integers(0, 6))
def test_krum_picks_an_honest_update(seed: int, n_honest: int, at: int) -> None:
    honest = random_updates(seed, n_honest)
    chosen = aggregate("krum", with_outlier(honest, min(at, n_honest)), RNG, n_byzantine=1)
    assert any(all(torch.equal(chosen[k], u.state[k]) for k in chosen) for u in honest)


def test_krum_score_matches_blanchard_definition() -> None:
    points = torch.tensor([[0.0], [1.0], [3.0], [10.0], [11.0]], dtype=torch.float64)
    # n=5, f=1: each point sums the squared distances to its n − f − 2 = 2 closest others.
    expected = [1 + 9, 1 + 4, 4 + 9, 1 + 49, 1 + 64]
    assert krum_scores(points, 1).tolist() == expected


def test_krum_breaks_ties_by_lowest_index_and_never_picks_nan() -> None:
    ups = [Update({"a": torch.tensor([x])}) for x in (1.0, -1.0, 0.0, 0.0, float("nan"))]
    assert aggregate("krum", ups[:4], RNG, n_byzantine=0).get("a") == torch.tensor([0.0])
    tied = [Update({"a": torch.tensor([x])}) for x in (-1.0, 1.0, 3.0, -3.0)]
    assert aggregate("krum", tied, RNG, n_byzantine=0)["a"].item() == -1.0
    assert not math.isnan(aggregate("krum", ups, RNG, n_byzantine=0)["a"].item())


@pytest.mark.parametrize(("n", "f"), [(4, 1), (2, 0), (6, 2)])
def test_krum_needs_more_than_2f_plus_2_updates(n: int, f: int) -> None:
    with pytest.raises(ConfigError, match="n_byzantine"):
        aggregate("krum", random_updates(0, n), RNG, n_byzantine=f)
    with pytest.raises(ConfigError, match="n_byzantine"):
        aggregate("multikrum", random_updates(0, n), RNG, n_byzantine=f)


def test_multikrum_extremes_are_krum_and_the_mean() -> None:
    ups = random_updates(3, 6)
    one = aggregate("multikrum", ups, RNG, n_byzantine=1, m=1)
    assert all(torch.equal(one[k], v) for k, v in aggregate("krum", ups, RNG).items())
    every = aggregate("multikrum", ups, RNG, n_byzantine=1, m=6)
    for k, v in aggregate("mean", ups, RNG).items():
        torch.testing.assert_close(every[k], v)
    with pytest.raises(ConfigError, match=r"multikrum\.m"):
        aggregate("multikrum", ups, RNG, m=7)


def test_median_and_trimmed_mean_by_hand() -> None:
    ups = [
        Update({"a": torch.tensor([x, -x])}, weight=w)
        for x, w in [(1.0, 9), (2.0, 1), (3.0, 1), (10.0, 1)]
    ]
    assert aggregate("median", ups, RNG)["a"].tolist() == [2.5, -2.5]
    assert aggregate("median", ups[:3], RNG)["a"].tolist() == [2.0, -2.0]
    assert aggregate("trimmed_mean", ups, RNG, trim_ratio=0.25)["a"].tolist() == [2.5, -2.5]
    assert aggregate("trimmed_mean", ups, RNG, trim_ratio=0.0)["a"].tolist() == [4.0, -4.0]


@pytest.mark.parametrize("ratio", [-0.1, 0.5, 0.9])
def test_trimmed_mean_rejects_bad_ratio(ratio: float) -> None:
    with pytest.raises(ConfigError, match="trim_ratio"):
        aggregate("trimmed_mean", random_updates(0, 3), RNG, trim_ratio=ratio)


def test_integer_buffers_take_the_max_or_follow_the_chosen_update() -> None:
    ups = [
        Update({"w": torch.tensor([float(i)]), "n": torch.tensor(i, dtype=torch.int64)})
        for i in range(5)
    ]
    for name, params in ROBUST[:2]:
        assert int(aggregate(name, ups, RNG, **params)["n"]) == 4, name
    chosen = aggregate("krum", ups, RNG)
    assert chosen["n"].dtype == torch.int64 and int(chosen["n"]) == int(chosen["w"].item())
    # Multi-Krum (f=1) keeps the 4 best: scores tie at the ends, the lowest index wins.
    assert int(aggregate("multikrum", ups, RNG)["n"]) == 3


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5), max_norm=st.floats(0.1, 50.0))
def test_clip_by_norm_bounds_norm_and_keeps_direction(seed: int, n: int, max_norm: float) -> None:
    deltas = random_updates(seed, n, kind="delta")
    for before, after in zip(deltas, clip_by_norm(deltas, max_norm), strict=True):
        v0, v1 = flatten(before.state), flatten(after.state)
        assert float(v1.norm()) <= max_norm * (1 + 1e-5)
        scale = min(1.0, max_norm / float(v0.norm()))
        torch.testing.assert_close(v1, v0 * scale, rtol=1e-5, atol=1e-5)
        assert after.kind == "delta" and after.weight == before.weight


def test_clip_states_relative_to_reference() -> None:
    ref = {"w": torch.tensor([1.0, 1.0]), "n": torch.tensor(3)}
    up = Update({"w": torch.tensor([4.0, 5.0]), "n": torch.tensor(7)})
    (clipped,) = clip_by_norm([up], 1.0, reference=ref)
    torch.testing.assert_close(clipped.state["w"], torch.tensor([1.6, 1.8]))
    assert int(clipped.state["n"]) == 7
    assert up.state["w"].tolist() == [4.0, 5.0]
    with pytest.raises(AggregationError, match="reference"):
        clip_by_norm([up], 1.0)


def test_clipped_mean_is_mean_of_clipped_deltas() -> None:
    ups = [
        Update({"w": torch.tensor([x, 0.0])}, weight=w, kind="delta") for x, w in [(1, 1), (30, 3)]
    ]
    result = aggregate("clipped_mean", ups, RNG, max_norm=2.0)
    expected = weighted_mean(
        [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([2.0, 0.0])}], [1, 3]
    )
    torch.testing.assert_close(result["w"], expected["w"])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), True])
def test_clip_rejects_bad_max_norm(bad: float) -> None:
    with pytest.raises(ConfigError, match="max_norm"):
        clip_by_norm(random_updates(0, 1, kind="delta"), bad)

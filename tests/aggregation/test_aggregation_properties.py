"""Properties every aggregator must have (DESIGN §2.2), plus weighted-mean specifics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedge.aggregation import (
    AGGREGATORS,
    AggregationError,
    aggregate,
    krum_scores,
    weighted_mean,
)
from fedge.core import ConfigError, ModelState, Update
from fedge.core.update import clone_state, flatten

RNG = np.random.default_rng(0)
SHAPES = st.one_of(
    st.just(()),
    st.tuples(st.integers(1, 4)),
    st.tuples(st.integers(1, 3), st.integers(1, 4)),
)
VALUES = st.floats(-100, 100, allow_nan=False, width=32)
WEIGHTS = st.floats(0.1, 10.0)


def tensors(shape: tuple[int, ...]) -> st.SearchStrategy[torch.Tensor]:
    return arrays(np.float32, shape, elements=VALUES).map(lambda a: torch.from_numpy(a.copy()))


@st.composite
def update_lists(draw: st.DrawFn, min_n: int = 1, max_n: int = 6) -> list[Update]:
    """1–6 updates of a state with two float tensors (shapes up to 3×4), random weights."""
    shapes = [draw(SHAPES), draw(SHAPES)]
    n = draw(st.integers(min_n, max_n))
    return [
        Update({f"p{j}": draw(tensors(s)) for j, s in enumerate(shapes)}, weight=draw(WEIGHTS))
        for _ in range(n)
    ]


def configs(n: int, like: ModelState, max_norm: float = 5.0) -> list[tuple[str, dict[str, object]]]:
    """Parameters for every aggregator that accept ``n`` updates."""
    out: list[tuple[str, dict[str, object]]] = [
        ("mean", {}),
        ("median", {}),
        ("trimmed_mean", {"trim_ratio": 0.2}),
        ("clipped_mean", {"max_norm": max_norm, "reference": {k: v * 0 for k, v in like.items()}}),
    ]
    if n >= 3:
        f = (n - 3) // 2
        out += [("krum", {"n_byzantine": f}), ("multikrum", {"n_byzantine": f})]
    return out


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def assert_states_close(a: ModelState, b: ModelState) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert_close(a[k], b[k])


def selection_is_unique(name: str, updates: list[Update], params: dict[str, object]) -> bool:
    """False when Krum's pick or Multi-Krum's chosen set depends on a tie in the scores."""
    if name not in ("krum", "multikrum"):
        return True
    f = params["n_byzantine"]
    assert isinstance(f, int)
    scores = np.sort(krum_scores(torch.stack([flatten(u.state) for u in updates]), f).numpy())
    m = 1 if name == "krum" else len(scores) - f
    return m == len(scores) or bool(scores[m - 1] < scores[m])


def test_every_aggregator_has_a_property_config() -> None:
    like = {"w": torch.zeros(2)}
    ours = {n for n in AGGREGATORS.names() if AGGREGATORS.get(n).__module__.startswith("fedge.")}
    assert ours <= {name for name, _ in configs(5, like)}


@settings(max_examples=40, deadline=None)
@given(updates=update_lists(), seed=st.integers(0, 2**32 - 1))
def test_permutation_invariance(updates: list[Update], seed: int) -> None:
    order = np.random.default_rng(seed).permutation(len(updates))
    shuffled = [updates[i] for i in order]
    for name, params in configs(len(updates), updates[0].state):
        if not selection_is_unique(name, updates, params):
            continue
        expected = aggregate(name, updates, RNG, **params)
        assert_states_close(aggregate(name, shuffled, RNG, **params), expected)


@settings(max_examples=30, deadline=None)
@given(updates=update_lists())
def test_identity_on_equal_inputs(updates: list[Update]) -> None:
    state = updates[0].state
    same = [Update(clone_state(state), weight=u.weight) for u in updates]
    for name, params in configs(len(same), state, max_norm=1e6):
        assert_states_close(aggregate(name, same, RNG, **params), state)


@settings(max_examples=30, deadline=None)
@given(updates=update_lists(), shift=tensors(()))
def test_states_and_deltas_alike(updates: list[Update], shift: torch.Tensor) -> None:
    """Aggregating deltas from a reference, then adding it, equals aggregating the states.

    float64 makes the deltas exact, so Krum sees the same distances in both cases.
    """
    updates = [Update({k: v.double() for k, v in u.state.items()}, u.weight) for u in updates]
    ref = {k: torch.full_like(v, float(shift)) for k, v in updates[0].state.items()}
    deltas = [
        Update({k: v - ref[k] for k, v in u.state.items()}, u.weight, "delta") for u in updates
    ]
    for name, params in configs(len(updates), ref):
        if name == "clipped_mean":
            params = {**params, "reference": ref}
        if not selection_is_unique(name, updates, params):
            continue
        from_states = aggregate(name, updates, RNG, **params)
        from_deltas = aggregate(name, deltas, RNG, **params)
        assert_states_close({k: v + ref[k] for k, v in from_deltas.items()}, from_states)


@settings(max_examples=20, deadline=None)
@given(updates=update_lists())
def test_inputs_are_not_mutated(updates: list[Update]) -> None:
    before = [clone_state(u.state) for u in updates]
    for name, params in configs(len(updates), updates[0].state):
        aggregate(name, updates, RNG, **params)
    for u, b in zip(updates, before, strict=True):
        for k in b:
            assert torch.equal(u.state[k], b[k])


@settings(max_examples=40, deadline=None)
@given(updates=update_lists(), scale=st.floats(1e-3, 1e3))
def test_mean_matches_formula_and_ignores_weight_scale(updates: list[Update], scale: float) -> None:
    states = [u.state for u in updates]
    weights = [u.weight for u in updates]
    result = weighted_mean(states, weights)
    for k in result:
        terms = [w * s[k].double().numpy() for w, s in zip(weights, states, strict=True)]
        expected = np.sum(terms, axis=0) / sum(weights)
        assert_close(result[k], torch.from_numpy(np.asarray(expected)).float())
    assert_states_close(weighted_mean(states, [w * scale for w in weights]), result)
    assert_states_close(aggregate("mean", updates, RNG), result)


@given(n=st.integers(1, 5))
@settings(max_examples=10, deadline=None)
def test_weighted_mean_keeps_dtypes_and_takes_max_of_integer_buffers(n: int) -> None:
    states = [
        {
            "w16": torch.full((2,), float(i), dtype=torch.float16),
            "w64": torch.full((2, 2), float(i), dtype=torch.float64),
            "num_batches_tracked": torch.tensor(10 * i, dtype=torch.int64),
            "mask": torch.tensor([i % 2 == 0, False]),
        }
        for i in range(n)
    ]
    result = weighted_mean(states, [1.0] * n)
    assert {k: v.dtype for k, v in result.items()} == {k: v.dtype for k, v in states[0].items()}
    assert int(result["num_batches_tracked"]) == 10 * (n - 1)
    assert result["mask"].tolist() == [True, False]
    torch.testing.assert_close(result["w64"], torch.full((2, 2), (n - 1) / 2, dtype=torch.float64))


def test_mean_ignores_zero_weight_updates() -> None:
    states = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([100.0])}]
    assert weighted_mean(states, [2.0, 0.0])["w"].item() == 1.0


@pytest.mark.parametrize(
    ("states", "weights", "message"),
    [
        ([], [], "no states"),
        ([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}], [1, 1], "'a', 'b'"),
        ([{"a": torch.zeros(1)}, {"a": torch.zeros(2)}], [1, 1], "key 'a'"),
        ([{"a": torch.zeros(1)}], [-1.0], ">= 0"),
        ([{"a": torch.zeros(1)}], [0.0], "positive sum"),
        ([{"a": torch.zeros(1)}], [1.0, 1.0], "2 weights for 1 states"),
        ([{"a": torch.zeros(1)}], [float("nan")], "finite"),
    ],
)
def test_weighted_mean_rejects_bad_input(
    states: list[ModelState], weights: list[float], message: str
) -> None:
    with pytest.raises(AggregationError, match=message):
        weighted_mean(states, weights)


def test_mixed_update_kinds_are_rejected() -> None:
    ups = [Update({"a": torch.zeros(1)}), Update({"a": torch.zeros(1)}, kind="delta")]
    with pytest.raises(AggregationError, match="mixed kinds"):
        aggregate("median", ups, RNG)


def test_unknown_aggregator_lists_the_known_names() -> None:
    with pytest.raises(ConfigError, match="aggregator") as err:
        aggregate("fedmedian", [Update({"a": torch.zeros(1)})], RNG)
    for name in ("mean", "median", "krum", "trimmed_mean"):
        assert name in str(err.value)


def test_unknown_parameter_is_named_with_the_allowed_ones() -> None:
    ups = [Update({"a": torch.zeros(1)})]
    with pytest.raises(ConfigError, match="trim_fraction") as err:
        aggregate("trimmed_mean", ups, RNG, trim_fraction=0.1)
    assert "trim_ratio" in str(err.value)
    with pytest.raises(ConfigError, match="no parameters"):
        aggregate("mean", ups, RNG, weights=[1.0])


def test_missing_required_parameter_is_reported() -> None:
    with pytest.raises(ConfigError, match="max_norm"):
        aggregate("clipped_mean", [Update({"a": torch.zeros(1)}, kind="delta")], RNG)

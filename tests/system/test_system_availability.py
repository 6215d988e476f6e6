"""Availability: deterministic per (seed, node, round), empirical rate, traces, stragglers."""

from __future__ import annotations

import pytest

from fedge.core.errors import ConfigError
from fedge.system import Availability


def test_deterministic_and_independent_of_call_order() -> None:
    av = Availability(dropout_prob=0.3, seed=11)
    keys = [(f"dev{i}", r) for i in range(20) for r in range(10)]
    forward = {k: av.is_available(*k) for k in keys}
    backward = {k: av.is_available(*k) for k in reversed(keys)}
    assert forward == backward
    again = Availability(dropout_prob=0.3, seed=11)
    assert all(again.is_available(*k) == v for k, v in forward.items())
    other = Availability(dropout_prob=0.3, seed=12)
    assert any(other.is_available(*k) != v for k, v in forward.items())


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_empirical_dropout_rate(p: float) -> None:
    av = Availability(dropout_prob=p, seed=3)
    n = 8000
    off = sum(not av.is_available(f"dev{i % 200}", i // 200) for i in range(n))
    assert off / n == pytest.approx(p, abs=0.02)


def test_trace_forces_absence_and_per_node_override() -> None:
    av = Availability(trace={"dev1": frozenset({2, 3})}, per_node_dropout={"dev2": 1.0})
    assert [av.is_available("dev1", r) for r in range(5)] == [True, True, False, False, True]
    assert not any(av.is_available("dev2", r) for r in range(20))
    assert all(av.is_available("dev0", r) for r in range(20))


def test_stragglers() -> None:
    av = Availability(straggler_prob=0.25, straggler_slowdown=4.0, seed=1)
    factors = [av.slowdown(f"dev{i}", 0) for i in range(2000)]
    assert set(factors) == {1.0, 4.0}
    assert factors.count(4.0) / 2000 == pytest.approx(0.25, abs=0.04)
    assert Availability().slowdown("dev0", 0) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dropout_prob": 1.5}, "Availability.dropout_prob"),
        ({"dropout_prob": -0.1}, "Availability.dropout_prob"),
        ({"straggler_slowdown": 0.5}, "Availability.straggler_slowdown"),
        ({"per_node_dropout": {"dev0": 2.0}}, "Availability.per_node_dropout[dev0]"),
    ],
)
def test_bad_probabilities(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        Availability(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field

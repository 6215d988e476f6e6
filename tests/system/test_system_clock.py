"""SimClock: time order, FIFO ties, never backwards; WallClock moves forward."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.system import SimClock, WallClock


def test_pops_in_time_order_with_fifo_ties() -> None:
    clock = SimClock()
    clock.schedule(2.0, "c")
    clock.schedule(1.0, "a")
    clock.schedule(2.0, "d")
    clock.schedule(1.0, "b")
    assert clock.peek_time() == 1.0
    assert len(clock) == 4
    popped = [clock.pop() for _ in range(4)]
    assert popped == [(1.0, "a"), (1.0, "b"), (2.0, "c"), (2.0, "d")]
    assert clock.now() == 2.0
    assert clock.peek_time() is None


def test_refuses_the_past() -> None:
    clock = SimClock(start_s=5.0)
    with pytest.raises(ValueError, match="cannot schedule"):
        clock.schedule(4.0, "late")
    clock.advance_to(7.0)
    assert clock.now() == 7.0
    with pytest.raises(ValueError, match="back"):
        clock.advance_to(6.0)
    with pytest.raises(ValueError):
        clock.schedule(6.5, "still late")
    clock.schedule(7.0, "now is fine")
    assert clock.pop() == (7.0, "now is fine")


def test_pop_advances_but_never_rewinds() -> None:
    clock = SimClock()
    clock.schedule(3.0, "x")
    clock.advance_to(1.0)
    assert clock.pop() == (3.0, "x")
    assert clock.now() == 3.0
    clock.schedule(4.0, "y")
    clock.advance_to(10.0)
    assert clock.pop() == (4.0, "y")
    assert clock.now() == 10.0
    with pytest.raises(IndexError):
        clock.pop()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5), max_size=40))
def test_order_is_time_then_insertion(times: list[int]) -> None:
    clock = SimClock()
    for i, t in enumerate(times):
        clock.schedule(float(t), i)
    out = [clock.pop() for _ in range(len(clock))]
    expected = sorted(((float(t), i) for i, t in enumerate(times)), key=lambda p: (p[0], p[1]))
    assert out == expected
    assert [t for t, _ in out] == sorted(t for t, _ in out)


def test_wall_clock_is_monotonic() -> None:
    clock = WallClock()
    a = clock.now()
    b = clock.now()
    assert 0.0 <= a <= b < 5.0

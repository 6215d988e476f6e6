"""Clocks: a simulated event clock for the local engine, a wall clock for deployments."""

from __future__ import annotations

import heapq
import math
import time


class SimClock:
    """An event heap with a simulated time that only moves forward.

    Events at the same time pop in the order they were scheduled (an insertion counter
    breaks ties), so a run is deterministic whatever the items are.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        if not math.isfinite(start_s):
            raise ValueError(f"start_s must be finite, got {start_s!r}")
        self._now_s = float(start_s)
        self._heap: list[tuple[float, int, object]] = []
        self._counter = 0

    def now(self) -> float:
        """The current simulated time in seconds."""
        return self._now_s

    def schedule(self, time_s: float, item: object) -> None:
        """Queue ``item`` to pop at ``time_s``; the past is refused with ValueError."""
        if math.isnan(time_s) or time_s < self._now_s:
            raise ValueError(f"cannot schedule at {time_s!r} s: the clock is at {self._now_s} s")
        heapq.heappush(self._heap, (float(time_s), self._counter, item))
        self._counter += 1

    def pop(self) -> tuple[float, object]:
        """Remove the earliest event, advance the clock to its time and return (time_s, item)."""
        if not self._heap:
            raise IndexError("pop from an empty SimClock")
        time_s, _, item = heapq.heappop(self._heap)
        self._now_s = max(self._now_s, time_s)
        return time_s, item

    def peek_time(self) -> float | None:
        """Time of the earliest event, or None when nothing is scheduled."""
        return self._heap[0][0] if self._heap else None

    def advance_to(self, time_s: float) -> None:
        """Move the clock forward to ``time_s`` (ValueError if that is in the past).

        Events scheduled before ``time_s`` stay in the heap; popping one later does not move
        the clock backwards, it only returns the event's own time.
        """
        if math.isnan(time_s) or time_s < self._now_s:
            raise ValueError(f"cannot move the clock back from {self._now_s} s to {time_s!r} s")
        self._now_s = float(time_s)

    def __len__(self) -> int:
        """Number of scheduled events (so ``while clock:`` drains the heap)."""
        return len(self._heap)


class WallClock:
    """Real seconds since construction (``time.monotonic``), for deployments."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def now(self) -> float:
        """Seconds elapsed since this clock was created."""
        return time.monotonic() - self._start

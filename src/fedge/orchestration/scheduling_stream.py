"""Sliding-window scheduling of a stream of arriving tasks (seed 004's adaptive scheduling).

Tasks arrive as a Poisson process; every ``window`` arrivals the scheduler assigns that batch
at the arrival time of its last task, to nodes that keep the backlog of earlier windows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedge.core.errors import ConfigError
from fedge.orchestration.scheduling_exact import lp_bound
from fedge.orchestration.scheduling_problem import (
    FloatArray,
    IntArray,
    SchedulingProblem,
    Solution,
    node_loads,
)

WindowScheduler = Callable[[SchedulingProblem], Solution]
MAX_BOUND_WINDOWS = 16


def arrival_times_s(problem: SchedulingProblem, seed: int, load: float = 0.9) -> FloatArray:
    """Poisson arrivals at rate load * sum_j 1 / (mean et of node j): ``load`` is roughly the
    offered utilisation of the cluster (1 = as fast as the nodes can serve on average)."""
    if not load > 0:
        raise ConfigError("load", load, "a number > 0")
    rate = load * float((1.0 / problem.et_s.mean(axis=0)).sum())
    gaps = np.random.default_rng([seed, 4, problem.tasks]).exponential(1.0 / rate, problem.tasks)
    times: FloatArray = np.cumsum(gaps)
    return times


@dataclass(frozen=True)
class StreamResult:
    """The whole stream's assignment, node completion times and the scheduler's work."""

    assignment: IntArray
    finish_s: FloatArray
    windows: int
    scheduler_s: float


def run_stream(
    problem: SchedulingProblem,
    arrivals_s: FloatArray,
    window: int,
    scheduler: WindowScheduler,
    clock: Callable[[], float],
) -> StreamResult:
    """Schedule the tasks in windows of ``window`` arrivals; ``clock`` times the scheduler."""
    if window < 1:
        raise ConfigError("window", window, "an integer >= 1")
    finish = np.zeros(problem.nodes)
    out = np.empty(problem.tasks, dtype=np.int64)
    spent = 0.0
    starts = range(0, problem.tasks, window)
    for start in starts:
        rows = np.arange(start, min(start + window, problem.tasks))
        now = float(arrivals_s[rows[-1]])
        sub = problem.window(rows, np.maximum(finish - now, 0.0))
        t0 = clock()
        sol = scheduler(sub)
        spent += clock() - t0
        out[rows] = sol.assignment
        busy = np.bincount(sol.assignment, minlength=problem.nodes) > 0
        finish = np.where(busy, now + node_loads(sub, sol.assignment), finish)
    return StreamResult(out, finish, len(starts), spent)


def stream_metrics(problem: SchedulingProblem, result: StreamResult) -> dict[str, float]:
    """makespan (last completion, from time 0), total execution time and load imbalance
    ((max - min) / mean node completion time) of a whole stream."""
    finish = result.finish_s
    mean = float(finish.mean())
    return {
        "makespan": float(finish.max()),
        "total_time": float(problem.et_s[np.arange(problem.tasks), result.assignment].sum()),
        "load_imbalance": float((finish.max() - finish.min()) / mean) if mean > 0 else 0.0,
    }


def stream_lower_bound(problem: SchedulingProblem, arrivals_s: FloatArray, window: int) -> float:
    """A proven bound for any schedule that releases window w at its last arrival t_w:
    max over w of t_w + lp_bound(the tasks of windows w, w+1, ... on idle nodes), taken over
    at most 16 evenly spread windows (each term is a valid bound on its own)."""
    starts = np.arange(0, problem.tasks, window)
    picks = np.unique(np.linspace(0, starts.size - 1, min(starts.size, MAX_BOUND_WINDOWS)))
    best = 0.0
    for w in picks.astype(np.int64):
        start = int(starts[w])
        now = float(arrivals_s[min(start + window, problem.tasks) - 1])
        rest = problem.window(np.arange(start, problem.tasks), np.zeros(problem.nodes))
        best = max(best, now + lp_bound(rest))
    return best

"""Independent-task scheduling on heterogeneous nodes: the problem, a solution, the metrics.

K independent tasks go to N nodes; ``et_s[i, j]`` is the expected time to compute (ETC) of
task i on node j, in seconds. A node runs its tasks one after the other after finishing its
backlog ``ready_s[j]``, so node j completes at ``ready_s[j] + sum of et_s[i, j]`` over its
tasks and the makespan is the latest completion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedge.core.errors import ConfigError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
ETC_KINDS = ("consistent", "inconsistent")
SIZE_RANGE_GFLOP = (1.0, 100.0)
SPEED_RANGE_GFLOPS = (1.0, 10.0)
INCONSISTENCY_RANGE = (1.0, 10.0)


@dataclass(frozen=True)
class SchedulingProblem:
    """ETC matrix (tasks x nodes, seconds), node backlog and the memory ATSA's heuristic reads."""

    et_s: FloatArray
    ready_s: FloatArray
    task_memory_mb: FloatArray
    node_memory_mb: FloatArray

    def __post_init__(self) -> None:
        et = self.et_s
        if et.ndim != 2 or et.shape[0] < 1 or et.shape[1] < 1:
            raise ConfigError("et_s", et.shape, "a 2-d (tasks, nodes) matrix with both >= 1")
        if not np.all(np.isfinite(et)) or np.any(et <= 0):
            raise ConfigError("et_s", "non-positive or non-finite entries", "finite times > 0")
        k, n = et.shape
        for name, arr, size in (
            ("ready_s", self.ready_s, n),
            ("task_memory_mb", self.task_memory_mb, k),
            ("node_memory_mb", self.node_memory_mb, n),
        ):
            if arr.shape != (size,) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise ConfigError(name, arr.shape, f"{size} finite values >= 0")

    @property
    def tasks(self) -> int:
        return int(self.et_s.shape[0])

    @property
    def nodes(self) -> int:
        return int(self.et_s.shape[1])

    def window(self, rows: IntArray | slice, ready_s: FloatArray) -> SchedulingProblem:
        """The sub-problem of some tasks on nodes that still have ``ready_s`` of backlog."""
        return SchedulingProblem(
            self.et_s[rows], ready_s, self.task_memory_mb[rows], self.node_memory_mb
        )


def make_problem(
    tasks: int,
    nodes: int,
    seed: int,
    etc: str = "consistent",
    sizes_gflop: ArrayLike | None = None,
    speeds_gflops: ArrayLike | None = None,
) -> SchedulingProblem:
    """A reproducible instance: the same (tasks, nodes, seed, etc) always gives the same ETC,
    and a seed gives the same task sizes whatever the number of nodes.

    ``consistent``: et[i, j] = size_i / speed_j (a faster node is faster for every task).
    ``inconsistent``: that matrix times an independent factor U(1, 10) per (task, node) pair
    (Braun et al.'s range-based method), so a node's rank changes from task to task.
    Sizes are U(1, 100) GFLOP and speeds U(1, 10) GFLOP/s unless given. Task memory is
    proportional to size; node memory is proportional to speed and holds the whole window.
    """
    _check_positive_int("tasks", tasks)
    _check_positive_int("nodes", nodes)
    if etc not in ETC_KINDS:
        raise ConfigError("etc", etc, "one of " + ", ".join(ETC_KINDS))
    if seed < 0:
        raise ConfigError("seed", seed, "an integer >= 0")
    sizes = _given_or_drawn("sizes_gflop", sizes_gflop, [seed, 0, tasks], SIZE_RANGE_GFLOP)
    speeds = _given_or_drawn("speeds_gflops", speeds_gflops, [seed, 1, nodes], SPEED_RANGE_GFLOPS)
    et = sizes[:, None] / speeds[None, :]
    if etc == "inconsistent":
        pairs = np.random.default_rng([seed, 2, tasks, nodes])
        et = et * pairs.uniform(*INCONSISTENCY_RANGE, size=et.shape)
    node_memory = speeds / speeds.sum() * sizes.sum()
    return SchedulingProblem(et, np.zeros(nodes), sizes.copy(), node_memory)


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, value, "an integer >= 1")


def _given_or_drawn(
    name: str, given: ArrayLike | None, stream: list[int], bounds: tuple[float, float]
) -> FloatArray:
    size = stream[-1]
    if given is None:
        drawn: FloatArray = np.random.default_rng(stream).uniform(*bounds, size=size)
        return drawn
    arr = np.asarray(given, dtype=np.float64)
    if arr.shape != (size,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ConfigError(name, arr.tolist(), f"{size} finite values > 0")
    return arr


@dataclass(frozen=True)
class Solution:
    """A task -> node assignment plus what the scheduler knows about it (e.g. a proven bound)."""

    assignment: IntArray
    lower_bound: float | None = None
    proven_optimal: bool | None = None
    info: Mapping[str, float] = field(default_factory=dict)


def node_loads(problem: SchedulingProblem, assignment: IntArray) -> FloatArray:
    """Completion time of each node: backlog plus the time of its assigned tasks."""
    et = problem.et_s[np.arange(problem.tasks), assignment]
    work = np.bincount(assignment, weights=et, minlength=problem.nodes).astype(np.float64)
    return problem.ready_s + work


def makespan(problem: SchedulingProblem, assignment: IntArray) -> float:
    return float(node_loads(problem, assignment).max())


def schedule_metrics(problem: SchedulingProblem, assignment: IntArray) -> dict[str, float]:
    """makespan, total execution time and load imbalance of one assignment.

    Load imbalance is (max - min) / mean of the node completion times (backlog included):
    0 when every node finishes together, 1 when the spread equals the mean.
    """
    loads = node_loads(problem, assignment)
    mean = float(loads.mean())
    return {
        "makespan": float(loads.max()),
        "total_time": float(problem.et_s[np.arange(problem.tasks), assignment].sum()),
        "load_imbalance": float((loads.max() - loads.min()) / mean) if mean > 0 else 0.0,
    }

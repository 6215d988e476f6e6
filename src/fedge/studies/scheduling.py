"""The ``scheduling`` study: a stream of independent tasks scheduled in sliding windows onto
the edge servers of the system model (seed 004's adaptive scheduling, on the run's own
system rather than a generated ETC matrix).

Model of time. Tasks arrive as a Poisson process (rate ``arrival_rate_per_s``) with sizes
U(``gflop_min``, ``gflop_max``) GFLOP, all drawn from the study's generator before any
scheduler runs, so every scheduler sees the same tasks for a seed. Each arrival is an event
on the simulated clock; a window of ``window`` tasks is released when its last task arrives
(the clock stands there for the step). Edge j runs a task in size / speed_j seconds, speed_j
being its compute profile's FLOP/s, one task after the other; it starts a window's tasks (in
arrival order) when the window is released and it has finished the work of earlier windows,
so backlogs carry over. The scheduler (``fedge.orchestration.scheduling.SCHEDULERS``) sees
the window's ETC matrix (size / speed), each edge's remaining backlog and, for ATSA's
heuristic, memories as ``make_problem`` reads them (a task's ∝ its size, an edge's ∝ its
speed, all edges together just holding the window).

One row per window: ``tasks``; ``makespan_s`` (from the release until every edge has done
the work it holds, as in ``schedule_metrics``: what the schedulers minimise);
``exec_time_s`` (sum of the window's execution times, the paper's Z_y); ``load_imbalance``
((max - min) / mean of the edges' completion times, backlog included); ``mean_wait_s``
(mean of start - arrival over the window's tasks); ``finish_time_s`` (the simulated time
when all work assigned so far is done: on the last row, the stream's makespan from time 0);
and ``scheduler_runtime_ms``, the scheduler call's wall-clock time, the only figure here
that is not simulated. ``tasks.csv`` in the run directory lists every task: step, arrival,
size, edge, start and finish.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from fedge.aggregation._params import check_params
from fedge.core.errors import ConfigError
from fedge.core.settings import Section
from fedge.orchestration.scheduling import SCHEDULERS
from fedge.orchestration.scheduling_problem import (
    FloatArray,
    IntArray,
    SchedulingProblem,
    make_problem,
    schedule_metrics,
)
from fedge.results import write_rows_csv
from fedge.runs.study import StudyContext, StudySpec, register_study
from fedge.system.model import SystemModel

TASKS_FILE = "tasks.csv"


class SchedulingSettings(Section):
    """``[study_params]`` of ``study = "scheduling"``."""

    section: ClassVar[str] = "study_params"

    tasks: int = Field(200, ge=1, description="tasks in the stream")
    window: int = Field(50, ge=1, description="tasks per scheduling window (one step each)")
    arrival_rate_per_s: float = Field(
        60.0, gt=0, description="Poisson arrivals per simulated second, over all edges"
    )
    gflop_min: float = Field(1.0, gt=0, description="smallest task size, GFLOP")
    gflop_max: float = Field(100.0, gt=0, description="largest task size, GFLOP")
    scheduler: str = Field("atsa", description="a scheduler of `fedge schedule`, or import path")
    scheduler_params: dict[str, Any] = Field(
        default_factory=dict, description="keyword parameters of the scheduler"
    )

    @model_validator(mode="after")
    def _consistent(self) -> SchedulingSettings:
        if self.window > self.tasks:
            raise ConfigError(
                "study_params.window",
                self.window,
                f"an integer <= study_params.tasks ({self.tasks})",
            )
        if self.gflop_max < self.gflop_min:
            raise ConfigError(
                "study_params.gflop_max",
                self.gflop_max,
                f"a number >= study_params.gflop_min ({self.gflop_min})",
            )
        fn = SCHEDULERS.get(self.scheduler, "study_params.scheduler")
        check_params("study_params.scheduler_params", fn, self.scheduler_params, skip=2)
        return self


@dataclass(frozen=True)
class TaskStream:
    """The stream's tasks in arrival order: arrival times (s) and sizes (GFLOP)."""

    arrival_s: FloatArray
    gflop: FloatArray


def draw_tasks(settings: SchedulingSettings, rng: np.random.Generator) -> TaskStream:
    """Exponential gaps at ``arrival_rate_per_s`` (first the gaps, then the sizes)."""
    gaps = rng.exponential(1.0 / settings.arrival_rate_per_s, settings.tasks)
    sizes = rng.uniform(settings.gflop_min, settings.gflop_max, settings.tasks)
    return TaskStream(np.cumsum(gaps), sizes)


def edge_speeds_gflops(system: SystemModel) -> FloatArray:
    """GFLOP/s of each edge server, in the order of ``system.ids("edge")``."""
    return np.array([e.compute.flops_per_s / 1e9 for e in system.topology.edges])


@dataclass(frozen=True)
class Window:
    """One scheduled window: its tasks (stream indices), problem, assignment and timeline."""

    rows: IntArray
    release_s: float
    problem: SchedulingProblem
    assignment: IntArray
    start_s: FloatArray
    runtime_ms: float

    @property
    def finish_s(self) -> FloatArray:
        et = self.problem.et_s[np.arange(self.problem.tasks), self.assignment]
        finish: FloatArray = self.start_s + et
        return finish


def _schedule_window(
    ctx: StudyContext, stream: TaskStream, rows: IntArray, busy_s: FloatArray
) -> Window:
    """Schedule the tasks ``rows`` at the clock's time onto edges busy until ``busy_s``."""
    s: SchedulingSettings = ctx.settings
    release_s = ctx.clock.now()
    speeds = edge_speeds_gflops(ctx.system)
    sizes = stream.gflop[rows]
    whole = make_problem(len(rows), len(speeds), 0, sizes_gflop=sizes, speeds_gflops=speeds)
    problem = whole.window(np.arange(len(rows)), np.maximum(busy_s - release_s, 0.0))
    fn = SCHEDULERS.get(s.scheduler, "study_params.scheduler")
    t0 = time.perf_counter()
    solution = fn(problem, ctx.rng, **s.scheduler_params)
    runtime_ms = (time.perf_counter() - t0) * 1e3
    assignment = np.asarray(solution.assignment, dtype=np.int64)
    free = np.maximum(busy_s, release_s)
    start = np.empty(len(rows))
    for i, j in enumerate(assignment):  # each edge runs its tasks in arrival order
        start[i] = free[j]
        free[j] += problem.et_s[i, j]
    return Window(rows, release_s, problem, assignment, start, runtime_ms)


def _row(window: Window, stream: TaskStream, busy_s: FloatArray) -> dict[str, float]:
    metrics = schedule_metrics(window.problem, window.assignment)
    wait = window.start_s - stream.arrival_s[window.rows]
    return {
        "tasks": len(window.rows),
        "makespan_s": metrics["makespan"],
        "exec_time_s": metrics["total_time"],
        "load_imbalance": metrics["load_imbalance"],
        "mean_wait_s": float(wait.mean()),
        "finish_time_s": float(busy_s.max()),
        "scheduler_runtime_ms": window.runtime_ms,
    }


def run(ctx: StudyContext) -> Iterator[dict[str, float]]:
    """One row per window (see the module docstring); writes tasks.csv after the last."""
    s: SchedulingSettings = ctx.settings
    stream = draw_tasks(s, ctx.rng)
    for i, arrival_s in enumerate(stream.arrival_s):
        ctx.clock.schedule(float(arrival_s), i)
    busy_s = np.zeros(len(ctx.system.topology.edges))
    log: list[dict[str, Any]] = []
    step = 0
    while ctx.clock:
        step += 1
        popped = [ctx.clock.pop()[1] for _ in range(min(s.window, len(ctx.clock)))]
        window = _schedule_window(ctx, stream, np.array(popped, dtype=np.int64), busy_s)
        finish = window.finish_s
        for j in np.unique(window.assignment):
            busy_s[j] = finish[window.assignment == j].max()
        log += _task_records(window, stream, ctx.system.ids("edge"), step)
        yield _row(window, stream, busy_s)
    write_rows_csv(log, ctx.run_dir / TASKS_FILE)


def _task_records(
    window: Window, stream: TaskStream, edges: list[str], step: int
) -> list[dict[str, Any]]:
    finish = window.finish_s
    return [
        {
            "task": int(task),
            "step": step,
            "arrival_s": float(stream.arrival_s[task]),
            "gflop": float(stream.gflop[task]),
            "edge": edges[int(j)],
            "start_s": float(window.start_s[i]),
            "finish_s": float(finish[i]),
        }
        for i, (task, j) in enumerate(zip(window.rows, window.assignment, strict=True))
    ]


SCHEDULING = register_study(
    StudySpec(
        "scheduling",
        "independent tasks in sliding windows on the edge servers (ATSA and baselines)",
        SchedulingSettings,
        run,
        summed=("tasks", "exec_time_s", "scheduler_runtime_ms"),
    )
)

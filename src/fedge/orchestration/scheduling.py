"""Task -> node scheduling: the scheduler registry and the comparison behind `fedge schedule`.

Every scheduler is ``fn(problem, rng, **params) -> Solution``; ``compare_schedulers`` runs
them on reproducible instances and reports makespan, total execution time, load imbalance,
wall-clock scheduler time and the gap to a proven lower bound (gap = makespan / bound - 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedge.core.errors import ConfigError
from fedge.core.registry import Registry
from fedge.orchestration.scheduling_aco import aco, atsa, atsa_paper
from fedge.orchestration.scheduling_exact import lp_bound, milp_schedule
from fedge.orchestration.scheduling_heuristics import fcfs, lpt, maxmin, minmin, pso, sufferage
from fedge.orchestration.scheduling_problem import (
    ETC_KINDS,
    SchedulingProblem,
    Solution,
    make_problem,
    schedule_metrics,
)
from fedge.orchestration.scheduling_stream import (
    arrival_times_s,
    run_stream,
    stream_lower_bound,
    stream_metrics,
)

SchedulerFn = Callable[..., Solution]
SCHEDULERS: Registry[SchedulerFn] = Registry("scheduler")
for _name, _fn in (
    ("atsa", atsa),
    ("atsa_paper", atsa_paper),
    ("aco", aco),
    ("fcfs", fcfs),
    ("pso", pso),
    ("minmin", minmin),
    ("maxmin", maxmin),
    ("sufferage", sufferage),
    ("lpt", lpt),
    ("milp", milp_schedule),
):
    SCHEDULERS.add(_name, _fn)

ROW_KEYS = (
    "algorithm",
    "etc",
    "nodes",
    "seed",
    "tasks",
    "window",
    "makespan",
    "total_time",
    "load_imbalance",
    "runtime_s",
    "lower_bound",
    "gap",
    "proven_optimal",
)


def schedule(problem: SchedulingProblem, algorithm: str, seed: int = 0, **params: Any) -> Solution:
    """Run one registered scheduler with its own seeded Generator."""
    fn = SCHEDULERS.get(algorithm, "algorithm")
    return fn(problem, np.random.default_rng([seed, 3]), **params)


@dataclass(frozen=True)
class ScheduleStudy:
    """What `fedge schedule` compares: algorithms x node counts x seeds x ETC kinds."""

    tasks: int = 200
    nodes: Sequence[int] = (10, 20, 30)
    algorithms: Sequence[str] = ("atsa", "atsa_paper", "aco", "fcfs", "lpt")
    seeds: int = 1
    etcs: Sequence[str] = ("consistent",)
    window: int | None = None
    load: float = 0.9
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.algorithms:
            SCHEDULERS.get(name, "algorithms")
        for etc in self.etcs:
            if etc not in ETC_KINDS:
                raise ConfigError("etc", etc, "one of " + ", ".join(ETC_KINDS))
        for n in self.nodes:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError("nodes", n, "integers >= 1")
        if self.tasks < 1 or self.seeds < 1:
            raise ConfigError("tasks/seeds", (self.tasks, self.seeds), "integers >= 1")
        if self.window is not None and self.window < 1:
            raise ConfigError("window", self.window, "an integer >= 1")


def compare_schedulers(study: ScheduleStudy) -> Iterator[dict[str, Any]]:
    """One row (keys ROW_KEYS) per (algorithm, nodes, seed, etc), instance by instance."""
    for etc in study.etcs:
        for nodes in study.nodes:
            for seed in range(study.seeds):
                problem = make_problem(study.tasks, nodes, seed, etc)
                yield from _instance_rows(study, problem, seed, {"etc": etc, "nodes": nodes})


def _instance_rows(
    study: ScheduleStudy, problem: SchedulingProblem, seed: int, key: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = []
    bound = 0.0
    for name in study.algorithms:
        row, row_bound = _run_one(study, problem, name, seed)
        bound = max(bound, row_bound)
        rows.append({**key, "algorithm": name, "seed": seed, **row})
    if study.window is None:
        bound = max(bound, lp_bound(problem))
    else:
        arrivals = arrival_times_s(problem, seed, study.load)
        bound = max(bound, stream_lower_bound(problem, arrivals, study.window))
    for row in rows:
        row.update(lower_bound=bound, gap=row["makespan"] / bound - 1.0)
    return [{k: row[k] for k in ROW_KEYS} for row in rows]


def _run_one(
    study: ScheduleStudy, problem: SchedulingProblem, name: str, seed: int
) -> tuple[dict[str, Any], float]:
    """Metrics of one scheduler on one instance, and the lower bound it proved (0 if none)."""
    fn = SCHEDULERS.get(name, "algorithms")
    params = dict(study.params.get(name, {}))
    rng = np.random.default_rng([seed, 3])
    base = {"tasks": problem.tasks, "window": study.window}
    if study.window is not None:
        arrivals = arrival_times_s(problem, seed, study.load)
        result = run_stream(
            problem, arrivals, study.window, lambda sub: fn(sub, rng, **params), time.perf_counter
        )
        metrics = stream_metrics(problem, result)
        return {**base, **metrics, "runtime_s": result.scheduler_s, "proven_optimal": None}, 0.0
    t0 = time.perf_counter()
    sol = fn(problem, rng, **params)
    runtime_s = time.perf_counter() - t0
    metrics = schedule_metrics(problem, sol.assignment)
    row = {**base, **metrics, "runtime_s": runtime_s, "proven_optimal": sol.proven_optimal}
    return row, sol.lower_bound or 0.0

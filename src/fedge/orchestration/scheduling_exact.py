"""Exact makespan scheduling as a MILP (HiGHS through scipy.optimize.milp) and lower bounds.

Variables x[i, j] in {0, 1} (task i on node j) and the makespan C:
min C  s.t.  sum_j x[i, j] = 1 for every task,  ready[j] + sum_i et[i, j] x[i, j] <= C.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from fedge.core.errors import ConfigError
from fedge.orchestration.scheduling_heuristics import list_schedule, lpt
from fedge.orchestration.scheduling_problem import IntArray, SchedulingProblem, Solution, makespan


def _model(problem: SchedulingProblem) -> tuple[Any, LinearConstraint, Bounds]:
    k, n = problem.et_s.shape
    nx = k * n
    cols = np.arange(nx)
    assign = sparse.coo_array((np.ones(nx), (np.repeat(np.arange(k), n), cols)), (k, nx + 1))
    load_rows = np.r_[np.tile(np.arange(n), k), np.arange(n)]
    load = sparse.coo_array(
        (np.r_[problem.et_s.ravel(), -np.ones(n)], (load_rows, np.r_[cols, np.full(n, nx)])),
        (n, nx + 1),
    )
    a = sparse.vstack([assign, load]).tocsr()
    lower = np.r_[np.ones(k), np.full(n, -np.inf)]
    upper = np.r_[np.ones(k), -problem.ready_s]
    cost = np.zeros(nx + 1)
    cost[-1] = 1.0
    bounds = Bounds(np.zeros(nx + 1), np.r_[np.ones(nx), np.inf])
    return cost, LinearConstraint(a, lower, upper), bounds


def _solve(problem: SchedulingProblem, integral: bool, options: dict[str, float]) -> Any:
    cost, constraint, bounds = _model(problem)
    integrality = np.r_[np.ones(cost.size - 1), 0.0] if integral else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "threads" is passed to HiGHS verbatim
        return milp(
            cost,
            integrality=integrality,
            constraints=constraint,
            bounds=bounds,
            options={**options, "threads": 1},
        )


def lp_relaxation(problem: SchedulingProblem) -> tuple[IntArray, float]:
    """The LP relaxation rounded (each task on the node holding its largest share; a vertex
    solution splits at most N tasks) and a proven lower bound on the makespan: max(LP
    optimum, the longest task on its fastest node plus that node's backlog, any backlog)."""
    res = _solve(problem, integral=False, options={})
    single = float((problem.ready_s[None, :] + problem.et_s).min(axis=1).max())
    bound = max(single, float(problem.ready_s.max()))
    if res.status != 0 or res.x is None:
        return list_schedule(problem, np.arange(problem.tasks)), bound
    shares = np.asarray(res.x[:-1]).reshape(problem.et_s.shape)
    rounded: IntArray = shares.argmax(axis=1).astype(np.int64)
    return rounded, max(bound, float(res.fun))


def lp_bound(problem: SchedulingProblem) -> float:
    """A proven lower bound on the makespan (see lp_relaxation)."""
    return lp_relaxation(problem)[1]


def milp_schedule(
    problem: SchedulingProblem,
    rng: np.random.Generator,
    *,
    time_limit_s: float = 10.0,
    mip_rel_gap: float = 1e-6,
) -> Solution:
    """The exact optimum by MILP (HiGHS), or its best schedule and proven dual bound when the
    time limit (default 10 s) stops it first; ``proven_optimal`` says which. Falls back on
    LPT's schedule if HiGHS found none in time."""
    if not time_limit_s > 0:
        raise ConfigError("time_limit_s", time_limit_s, "a number of seconds > 0")
    k, n = problem.et_s.shape
    res = _solve(problem, True, {"time_limit": float(time_limit_s), "mip_rel_gap": mip_rel_gap})
    if res.x is None:
        assignment = lpt(problem, rng).assignment
    else:
        assignment = np.asarray(res.x[:-1]).reshape(k, n).argmax(axis=1).astype(np.int64)
    bound = res.mip_dual_bound if res.mip_dual_bound is not None else -np.inf
    lower = min(max(float(bound), lp_bound(problem)), makespan(problem, assignment))
    gap_ok = makespan(problem, assignment) <= lower * (1 + max(mip_rel_gap, 1e-9))
    return Solution(assignment, lower_bound=lower, proven_optimal=res.status == 0 and gap_ok)

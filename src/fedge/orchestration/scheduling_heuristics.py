"""Baseline schedulers: FCFS, Min-Min, Max-Min, Sufferage, LPT and a discrete PSO.

Each takes a SchedulingProblem and a seeded Generator and returns a Solution; "completion
time" of task i on node j is the node's current completion time plus et[i, j].
"""

from __future__ import annotations

import numpy as np

from fedge.core.errors import ConfigError
from fedge.orchestration.scheduling_problem import (
    FloatArray,
    IntArray,
    SchedulingProblem,
    Solution,
)


def fcfs(problem: SchedulingProblem, rng: np.random.Generator) -> Solution:
    """First come, first served: tasks in arrival order, each to the node that is free first.

    The dispatcher ignores how long the task takes on each node (it only sees when nodes
    become free); ties go to the lowest node id, so an idle cluster is filled round-robin.
    """
    free = problem.ready_s.copy()
    out = np.empty(problem.tasks, dtype=np.int64)
    for i in range(problem.tasks):
        j = int(np.argmin(free))
        out[i] = j
        free[j] += problem.et_s[i, j]
    return Solution(out)


def lpt(problem: SchedulingProblem, rng: np.random.Generator) -> Solution:
    """LPT: longest task first (by its mean et over nodes), each onto the node where it
    completes first."""
    return Solution(list_schedule(problem, np.argsort(-problem.et_s.mean(axis=1), kind="stable")))


def list_schedule(problem: SchedulingProblem, order: IntArray) -> IntArray:
    """Tasks in ``order``, each onto the node where it completes first (earliest completion)."""
    loads = problem.ready_s.copy()
    out = np.empty(problem.tasks, dtype=np.int64)
    for i in order:
        j = int(np.argmin(loads + problem.et_s[i]))
        out[i] = j
        loads[j] += problem.et_s[i, j]
    return out


def minmin(problem: SchedulingProblem, rng: np.random.Generator) -> Solution:
    """Min-Min: repeatedly place the task whose best completion time is smallest."""
    return Solution(_batch_greedy(problem, "minmin"))


def maxmin(problem: SchedulingProblem, rng: np.random.Generator) -> Solution:
    """Max-Min: repeatedly place the task whose best completion time is largest."""
    return Solution(_batch_greedy(problem, "maxmin"))


def sufferage(problem: SchedulingProblem, rng: np.random.Generator) -> Solution:
    """Sufferage: repeatedly place the task that loses most (second-best minus best completion
    time) if it does not get its best node; one task per step."""
    return Solution(_batch_greedy(problem, "sufferage"))


def _batch_greedy(problem: SchedulingProblem, rule: str) -> IntArray:
    et = problem.et_s
    loads = problem.ready_s.copy()
    left = np.arange(problem.tasks)
    out = np.empty(problem.tasks, dtype=np.int64)
    while left.size:
        ct = loads[None, :] + et[left]
        best = ct.argmin(axis=1)
        best_ct = ct[np.arange(left.size), best]
        if rule == "minmin":
            pick = int(best_ct.argmin())
        elif rule == "maxmin":
            pick = int(best_ct.argmax())
        else:
            pick = int(_sufferage(ct, best_ct).argmax())
        i, j = int(left[pick]), int(best[pick])
        out[i] = j
        loads[j] += et[i, j]
        left = np.delete(left, pick)
    return out


def _sufferage(ct: FloatArray, best_ct: FloatArray) -> FloatArray:
    if ct.shape[1] == 1:
        return np.zeros(ct.shape[0])
    second: FloatArray = np.partition(ct, 1, axis=1)[:, 1]
    return second - best_ct


def pso(
    problem: SchedulingProblem,
    rng: np.random.Generator,
    *,
    particles: int = 30,
    iterations: int = 100,
    inertia: float = 0.7,
    c_personal: float = 1.5,
    c_global: float = 1.5,
) -> Solution:
    """Discrete PSO (random-key decoding): a particle is a vector in [0, N)^K whose floor is the
    node of each task; standard velocity update, fitness = makespan, velocities clipped to
    +-N/2. Defaults: 30 particles, 100 iterations, w = 0.7, c1 = c2 = 1.5."""
    if particles < 1 or iterations < 0:
        raise ConfigError("pso", (particles, iterations), "particles >= 1, iterations >= 0")
    k, n = problem.et_s.shape
    pos = rng.uniform(0, n, size=(particles, k))
    vel = rng.uniform(-n / 2, n / 2, size=(particles, k))
    fit = _swarm_makespans(problem, pos)
    pbest, pbest_fit = pos.copy(), fit.copy()
    g = int(fit.argmin())
    for _ in range(iterations):
        r1, r2 = rng.random((2, particles, k))
        vel = (
            inertia * vel
            + c_personal * r1 * (pbest - pos)
            + c_global * r2 * (pbest[g][None, :] - pos)
        )
        np.clip(vel, -n / 2, n / 2, out=vel)
        pos = np.clip(pos + vel, 0, n - 1e-9)
        fit = _swarm_makespans(problem, pos)
        better = fit < pbest_fit
        pbest[better], pbest_fit[better] = pos[better], fit[better]
        g = int(pbest_fit.argmin())
    return Solution(pbest[g].astype(np.int64))


def _swarm_makespans(problem: SchedulingProblem, pos: FloatArray) -> FloatArray:
    spans: FloatArray = swarm_loads(problem, pos.astype(np.int64)).max(axis=1)
    return spans


def swarm_loads(problem: SchedulingProblem, assignments: IntArray) -> FloatArray:
    """Node completion times of many assignments at once: (count, K) -> (count, N)."""
    count, k = assignments.shape
    n = problem.nodes
    et = problem.et_s[np.arange(k)[None, :], assignments]
    flat = (assignments + n * np.arange(count)[:, None]).ravel()
    work = np.bincount(flat, weights=et.ravel(), minlength=count * n).reshape(count, n)
    loads: FloatArray = work + problem.ready_s[None, :]
    return loads

"""Ant-colony schedulers: seed 004's ATSA exactly, a basic ACO, and our improved colony.

In every colony ant y puts task i on node j with probability proportional to
tau[i, j]^alpha * eta^beta. atsa_paper and aco build whole schedules task by task, all ants
at once (arrays of shape (ants, N)); atsa's ants rebuild a few tasks of the current schedule.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedge.core.errors import ConfigError
from fedge.orchestration.scheduling_exact import lp_relaxation
from fedge.orchestration.scheduling_heuristics import lpt, minmin, sufferage, swarm_loads
from fedge.orchestration.scheduling_local import improve
from fedge.orchestration.scheduling_problem import (
    FloatArray,
    IntArray,
    SchedulingProblem,
    Solution,
    makespan,
    node_loads,
)

# eta for task i given the ants' state: (i, state (ants, N)) -> (ants, N)
Heuristic = Callable[[int, FloatArray], FloatArray]
MIN_ETA = 1e-3


def _check(ants: int, iterations: int, alpha: float, beta: float, rho: float) -> None:
    if ants < 1 or iterations < 0:
        raise ConfigError("ants/iterations", (ants, iterations), "ants >= 1, iterations >= 0")
    if alpha < 0 or beta < 0 or not 0 < rho < 1:
        raise ConfigError("alpha/beta/rho", (alpha, beta, rho), "alpha, beta >= 0, 0 < rho < 1")


def _pick(weights: FloatArray, rng: np.random.Generator) -> IntArray:
    """One node per ant (row), with probability proportional to the row's weights."""
    cum = np.cumsum(weights, axis=1)
    r = rng.random(weights.shape[0]) * cum[:, -1]
    picked: IntArray = np.minimum((cum < r[:, None]).sum(axis=1), weights.shape[1] - 1)
    return picked


def atsa_paper(
    problem: SchedulingProblem,
    rng: np.random.Generator,
    *,
    ants: int = 10,
    iterations: int = 100,
    alpha: float = 1.0,
    beta: float = 5.0,
    rho: float = 0.5,
    q: float = 5.0,
    delta: float = 1.0,
) -> Solution:
    """Seed 004's ATSA exactly: tau[i, j] starts at 1 / (mean et of node j over the window),
    eta[i, j] = delta * (1 - mu_j), selection ~ tau^alpha * eta^beta, evaporation rho and
    each ant y adds Q / Z_y on its (task, node) pairs, Z_y = the ant's total execution time.

    Where the paper is terse we chose: mu_j (memory utilisation of node j) starts at 0 for
    every ant and grows by P_cur / P_vj when a task is placed on j, with P_cur the task's
    memory and P_vj the node's (make_problem: task memory ~ size, node memory ~ speed,
    together just holding the window); eta is floored at 1e-3 so a full node stays
    possible; delta multiplies every eta alike, so it cancels in the probabilities. Tasks
    go in arrival order; the paper does not say which schedule is returned, so we return
    the smallest makespan any ant built. Defaults: 10 ants, 100 iterations (not given in
    the paper; at least one iteration runs), alpha = 1, beta = 5, rho = 0.5, Q = 5 (the
    paper's).
    """
    _check(ants, iterations, alpha, beta, rho)
    share = problem.task_memory_mb[:, None] / np.maximum(problem.node_memory_mb, 1e-12)[None, :]

    def eta(i: int, mu: FloatArray) -> FloatArray:
        out: FloatArray = delta * np.maximum(1.0 - mu, MIN_ETA)
        return out

    def grow(i: int, mu: FloatArray, ant: IntArray, j: IntArray) -> None:
        mu[ant, j] += share[i, j]

    return _paper_colony(problem, rng, eta, grow, (ants, iterations, alpha, beta, rho, q))


def aco(
    problem: SchedulingProblem,
    rng: np.random.Generator,
    *,
    ants: int = 10,
    iterations: int = 100,
    alpha: float = 1.0,
    beta: float = 5.0,
    rho: float = 0.5,
    q: float = 5.0,
) -> Solution:
    """Basic ACO: the same colony as atsa_paper but with the textbook heuristic eta = 1 / et."""
    _check(ants, iterations, alpha, beta, rho)
    inv = 1.0 / problem.et_s

    def eta(i: int, state: FloatArray) -> FloatArray:
        return np.broadcast_to(inv[i], state.shape)

    def grow(i: int, state: FloatArray, ant: IntArray, j: IntArray) -> None:
        return None

    return _paper_colony(problem, rng, eta, grow, (ants, iterations, alpha, beta, rho, q))


Grow = Callable[[int, FloatArray, IntArray, IntArray], None]


def _paper_colony(
    problem: SchedulingProblem,
    rng: np.random.Generator,
    eta: Heuristic,
    grow: Grow,
    params: tuple[int, int, float, float, float, float],
) -> Solution:
    ants, iterations, alpha, beta, rho, q = params
    k, n = problem.et_s.shape
    tau = np.tile(1.0 / problem.et_s.mean(axis=0), (k, 1))
    best, best_c = np.empty(0, dtype=np.int64), np.inf
    rows = np.arange(ants)
    for _ in range(max(iterations, 1)):
        state = np.zeros((ants, n))
        tours = np.empty((ants, k), dtype=np.int64)
        for i in range(k):
            j = _pick(tau[i] ** alpha * eta(i, state) ** beta, rng)
            tours[:, i] = j
            grow(i, state, rows, j)
        total = problem.et_s[np.arange(k)[None, :], tours].sum(axis=1)
        spans = swarm_loads(problem, tours).max(axis=1)
        y = int(spans.argmin())
        if spans[y] < best_c:
            best, best_c = tours[y].copy(), float(spans[y])
        tau *= 1.0 - rho
        # every ant y adds Q / Z_y on its (task, node) pairs, ants in order
        np.add.at(tau, (np.tile(np.arange(k), ants), tours.ravel()), np.repeat(q / total, k))
    return Solution(best)


def atsa(
    problem: SchedulingProblem,
    rng: np.random.Generator,
    *,
    ants: int = 2,
    iterations: int = 600,
    patience: int = 600,
    rebuild: int = 4,
    alpha: float = 1.0,
    beta: float = 30.0,
    rho: float = 0.05,
    tau_min: float = 0.05,
    stop_gap: float = 1e-3,
) -> Solution:
    """Our colony: iterated ants with local search, seeded by LPT and the LP relaxation.

    The initial schedule is the best of LPT, Min-Min, Sufferage and the rounded LP
    relaxation; each start is polished by local search (moves, swaps and ejection chains,
    see scheduling_local). Every iteration each ant takes the current schedule, removes
    ``rebuild`` tasks (two from the last-finishing node, the rest at random) and puts them
    back, longest first, with probability ~ tau^alpha * eta^beta, eta = (best completion
    time / completion time on the node); local search follows and the best ant replaces the
    current schedule if it is no worse. Pheromone is hyper-cube MAX-MIN on the best-so-far
    (tau <- max((1 - rho) tau, tau_min), then + rho on its pairs), seeded on the polished
    start. Stops after ``iterations``, after ``patience`` iterations without a new best, or
    within ``stop_gap`` of the LP lower bound. The best-so-far is kept, so the result is
    never worse than the initial schedule (``info['initial_makespan']``).
    """
    _check(ants, iterations, alpha, beta, rho)
    if rebuild < 1 or patience < 1:
        raise ConfigError("rebuild/patience", (rebuild, patience), "integers >= 1")
    rounded, bound = lp_relaxation(problem)
    starts = [lpt(problem, rng).assignment, minmin(problem, rng).assignment, rounded]
    starts.append(sufferage(problem, rng).assignment)
    initial_c = min(makespan(problem, s) for s in starts)
    best = min((improve(problem, s) for s in starts), key=lambda a: makespan(problem, a))
    best_c = current_c = makespan(problem, best)
    current = best
    tau = np.full(problem.et_s.shape, tau_min)
    rows = np.arange(problem.tasks)
    tau[rows, best] = 1.0
    stale = used = 0
    params = (rebuild, alpha, beta)
    while used < iterations and stale < patience and best_c > bound * (1 + stop_gap):
        used += 1
        cands = [_iterated_ant(problem, current, tau, params, rng) for _ in range(ants)]
        cand_cs = [makespan(problem, c) for c in cands]
        if min(cand_cs) <= current_c:
            current, current_c = cands[int(np.argmin(cand_cs))], min(cand_cs)
        stale = 0 if current_c < best_c else stale + 1
        if current_c < best_c:
            best, best_c = current, current_c
        tau = np.maximum((1 - rho) * tau, tau_min)
        tau[rows, best] += rho
    return Solution(best, info={"initial_makespan": initial_c, "iterations": float(used)})


def _iterated_ant(
    problem: SchedulingProblem,
    current: IntArray,
    tau: FloatArray,
    params: tuple[int, float, float],
    rng: np.random.Generator,
) -> IntArray:
    """Remove some tasks from ``current``, put them back by tau^alpha * eta^beta, polish."""
    rebuild, alpha, beta = params
    et = problem.et_s
    out = current.copy()
    loads = node_loads(problem, out)
    on_last = np.flatnonzero(out == int(loads.argmax()))
    picked = rng.choice(on_last, min(2, on_last.size), replace=False)
    others = rng.choice(problem.tasks, min(rebuild, problem.tasks), replace=False)
    removed = np.r_[picked, others[~np.isin(others, picked)]][:rebuild]
    loads -= np.bincount(out[removed], weights=et[removed, out[removed]], minlength=problem.nodes)
    for i in removed[np.argsort(-et[removed].mean(axis=1), kind="stable")]:  # longest first
        ct = loads + et[i]
        weights = tau[i] ** alpha * (ct.min() / ct) ** beta
        j = int(_pick(weights[None, :], rng)[0])
        out[i] = j
        loads[j] += et[i, j]
    return improve(problem, out)

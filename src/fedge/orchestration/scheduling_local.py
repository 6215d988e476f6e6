"""Local search for makespan: move one task, or swap two, between any two nodes.

A move or swap between nodes a and b is accepted when the later of the two then finishes
earlier than the later of the two did before (Fanjul-Peyro & Ruiz's criterion for unrelated
machines): relieving a node that is not the last to finish makes room for the one that is.
"""

from __future__ import annotations

import numpy as np

from fedge.orchestration.scheduling_problem import (
    FloatArray,
    IntArray,
    SchedulingProblem,
    node_loads,
)

_REL_EPS = 1e-6


def improve(problem: SchedulingProblem, assignment: IntArray, max_steps: int = 10_000) -> IntArray:
    """Descent from ``assignment``: the best improving move, else the best swap, else an
    ejection chain off the last-finishing node. Each step lowers the sorted vector of node
    completion times lexicographically (by more than a 1e-6 share of the makespan), so the
    makespan never grows and the search ends. One step costs O(K * (K + N))."""
    out = assignment.copy()
    loads = node_loads(problem, out)
    for _ in range(max_steps):
        if not _step(problem.et_s, out, loads):
            break
    return out


def _step(et: FloatArray, assign: IntArray, loads: FloatArray) -> bool:
    """Apply the best improving move, else the best improving swap, in place; False when
    there is neither."""
    rows = np.arange(assign.size)
    own = loads[assign]
    freed = own - et[rows, assign]  # a task's node once it leaves
    tol = -_REL_EPS * float(loads.max())
    move = np.maximum(freed[:, None], loads[None, :] + et) - np.maximum(own[:, None], loads)
    move[rows, assign] = np.inf
    t, j = np.unravel_index(int(move.argmin()), move.shape)
    if move[t, j] < tol:
        _move(et, assign, loads, int(t), int(j))
        return True
    # swap[t, u]: t's node takes u instead of t, and the other way round
    after = freed[:, None] + et[:, assign].T
    swap = np.maximum(after, after.T) - np.maximum(own[:, None], own[None, :])
    swap[assign[:, None] == assign[None, :]] = np.inf
    t, u = np.unravel_index(int(swap.argmin()), swap.shape)
    if swap[t, u] < tol:
        a, b = int(assign[t]), int(assign[u])
        _move(et, assign, loads, int(t), b)
        _move(et, assign, loads, int(u), a)
        return True
    return _chain(et, assign, loads, tol)


def _chain(et: FloatArray, assign: IntArray, loads: FloatArray, tol: float) -> bool:
    """Ejection chain off the last-finishing node c: t moves from c to k and a task u of k
    moves on to a third node l, accepted when c, k and l all end before c did."""
    c = int(loads.argmax())
    on_c = np.flatnonzero(assign == c)
    others = np.flatnonzero(assign != c)
    if on_c.size == 0 or others.size == 0:
        return False
    k_u = assign[others]
    onward = loads[None, :] + et[others]  # u's node-by-node completion if it moves there
    onward[np.arange(others.size), k_u] = np.inf
    onward[:, c] = np.inf
    l_u = onward.argmin(axis=1)
    via = loads[k_u] - et[others, k_u]  # k once u has left, before t arrives
    worst = np.maximum(via[None, :] + et[on_c][:, k_u], onward.min(axis=1)[None, :])
    worst = np.maximum(worst, (loads[c] - et[on_c, c])[:, None])
    t, u = np.unravel_index(int(worst.argmin()), worst.shape)
    if worst[t, u] - loads[c] >= tol:
        return False
    _move(et, assign, loads, int(others[u]), int(l_u[u]))
    _move(et, assign, loads, int(on_c[t]), int(k_u[u]))
    return True


def _move(et: FloatArray, assign: IntArray, loads: FloatArray, task: int, node: int) -> None:
    old = int(assign[task])
    loads[old] -= et[task, old]
    loads[node] += et[task, node]
    assign[task] = node

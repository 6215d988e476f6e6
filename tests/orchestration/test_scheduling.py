"""Task scheduling: ETC generation, baselines on hand-computed cases, MILP optimality by
enumeration, lower bounds, ATSA's never-worse guarantee, the sliding window and the CLI."""

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.cli import main
from fedge.core.errors import ConfigError
from fedge.orchestration.scheduling import (
    ROW_KEYS,
    SCHEDULERS,
    ScheduleStudy,
    compare_schedulers,
    schedule,
)
from fedge.orchestration.scheduling_exact import lp_bound, milp_schedule
from fedge.orchestration.scheduling_heuristics import swarm_loads
from fedge.orchestration.scheduling_local import improve
from fedge.orchestration.scheduling_problem import (
    SchedulingProblem,
    make_problem,
    makespan,
    schedule_metrics,
)
from fedge.orchestration.scheduling_stream import (
    arrival_times_s,
    run_stream,
    stream_lower_bound,
    stream_metrics,
)

FAST = {
    "atsa": {"iterations": 30},
    "atsa_paper": {"ants": 4, "iterations": 10},
    "aco": {"ants": 4, "iterations": 10},
    "pso": {"particles": 10, "iterations": 20},
    "milp": {"time_limit_s": 5.0},
}


def _problem(et, ready=None):
    et = np.asarray(et, dtype=float)
    k, n = et.shape
    ready = np.zeros(n) if ready is None else np.asarray(ready, dtype=float)
    return SchedulingProblem(et, ready, np.ones(k), np.full(n, float(k)))


def _brute_force(problem):
    """The optimal makespan by trying all N^K assignments."""
    every = np.array(list(itertools.product(range(problem.nodes), repeat=problem.tasks)))
    return float(swarm_loads(problem, every).max(axis=1).min())


# --- the ETC matrix -------------------------------------------------------------------------


def test_etc_is_reproducible_from_the_seed():
    a = make_problem(40, 6, seed=3, etc="inconsistent")
    b = make_problem(40, 6, seed=3, etc="inconsistent")
    c = make_problem(40, 6, seed=4, etc="inconsistent")
    np.testing.assert_array_equal(a.et_s, b.et_s)
    assert not np.allclose(a.et_s, c.et_s)


def test_consistent_etc_ranks_nodes_alike_for_every_task_and_inconsistent_does_not():
    cons = make_problem(50, 8, seed=1, etc="consistent")
    ranks = np.argsort(cons.et_s, axis=1)
    assert (ranks == ranks[0]).all()
    inc = make_problem(50, 8, seed=1, etc="inconsistent")
    assert not (np.argsort(inc.et_s, axis=1) == np.argsort(inc.et_s[0])).all()


def test_given_sizes_and_speeds_make_the_consistent_matrix():
    p = make_problem(3, 2, seed=0, sizes_gflop=[10.0, 20.0, 30.0], speeds_gflops=[1.0, 5.0])
    np.testing.assert_allclose(p.et_s, [[10, 2], [20, 4], [30, 6]])
    with pytest.raises(ConfigError, match="speeds_gflops"):
        make_problem(3, 2, seed=0, speeds_gflops=[1.0, -5.0])
    with pytest.raises(ConfigError, match="etc"):
        make_problem(3, 2, seed=0, etc="random")


def test_metrics_of_a_hand_computed_assignment():
    p = _problem([[1.0, 4.0], [2.0, 1.5], [3.0, 5.0]], ready=[0.0, 0.5])
    m = schedule_metrics(p, np.array([0, 1, 0]))
    assert m["makespan"] == pytest.approx(4.0)  # node 0: 1 + 3, node 1: 0.5 + 1.5
    assert m["total_time"] == pytest.approx(5.5)
    assert m["load_imbalance"] == pytest.approx((4.0 - 2.0) / 3.0)


# --- baselines on a hand-computed case ------------------------------------------------------

TINY = [[1.0, 3.9], [2.0, 1.5], [3.0, 5.0]]


@pytest.mark.parametrize(
    ("name", "expected", "span"),
    [
        ("minmin", [0, 1, 0], 4.0),  # t0 -> n0 (ct 1), t1 -> n1 (1.5), t2 -> n0 (4)
        ("maxmin", [1, 0, 0], 5.0),  # t2 -> n0 (3), t0 -> n1 (3.9), t1 -> n0 (5)
        ("sufferage", [0, 1, 0], 4.0),  # sufferages 2.9, 0.5, 2 -> t0 first
        ("lpt", [1, 0, 0], 5.0),  # mean et 2.45, 1.75, 4 -> t2, t0, t1
        ("fcfs", [0, 1, 0], 4.0),  # t0 -> n0, t1 -> n1, t2 -> the first free (n0 at 1)
    ],
)
def test_baselines_match_hand_computed_schedules(name, expected, span):
    p = _problem(TINY)
    sol = schedule(p, name)
    assert sol.assignment.tolist() == expected
    assert makespan(p, sol.assignment) == pytest.approx(span)


# --- exact optimum and lower bounds ---------------------------------------------------------


@pytest.mark.parametrize("etc", ["consistent", "inconsistent"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_milp_is_optimal_on_small_instances(etc, seed):
    p = make_problem(6, 3, seed, etc)
    sol = milp_schedule(p, np.random.default_rng(0))
    best = _brute_force(p)
    assert sol.proven_optimal
    assert makespan(p, sol.assignment) == pytest.approx(best, rel=1e-6)
    assert sol.lower_bound <= best * (1 + 1e-9)
    assert lp_bound(p) <= best * (1 + 1e-9)


def test_milp_respects_node_backlog():
    base = make_problem(5, 3, seed=7, etc="inconsistent")
    p = base.window(np.arange(5), np.array([0.0, 40.0, 5.0]))
    sol = milp_schedule(p, np.random.default_rng(0))
    assert makespan(p, sol.assignment) == pytest.approx(_brute_force(p), rel=1e-6)


@pytest.mark.parametrize("etc", ["consistent", "inconsistent"])
def test_every_scheduler_is_at_or_above_the_lower_bound(etc):
    p = make_problem(40, 5, seed=2, etc=etc)
    bound = lp_bound(p)
    for name in SCHEDULERS:
        params = {"time_limit_s": 1.0} if name == "milp" else FAST.get(name, {})
        sol = schedule(p, name, seed=1, **params)
        assert sorted(set(sol.assignment.tolist())) <= list(range(5))
        assert makespan(p, sol.assignment) >= bound * (1 - 1e-9), name


# --- ATSA -----------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    tasks=st.integers(2, 30),
    nodes=st.integers(1, 6),
    etc=st.sampled_from(["consistent", "inconsistent"]),
)
def test_atsa_never_returns_worse_than_its_initial_solution(seed, tasks, nodes, etc):
    p = make_problem(tasks, nodes, seed, etc)
    sol = schedule(p, "atsa", seed, iterations=5)
    span = makespan(p, sol.assignment)
    assert span <= sol.info["initial_makespan"] * (1 + 1e-12)
    for start in ("lpt", "minmin", "sufferage"):
        assert span <= makespan(p, schedule(p, start).assignment) * (1 + 1e-12)


def test_atsa_without_iterations_is_still_its_polished_start():
    p = make_problem(30, 4, seed=5, etc="inconsistent")
    sol = schedule(p, "atsa", iterations=0)
    assert sol.info["iterations"] == 0
    assert makespan(p, sol.assignment) <= sol.info["initial_makespan"]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), tasks=st.integers(2, 25), nodes=st.integers(1, 5))
def test_local_search_never_raises_the_makespan(seed, tasks, nodes):
    p = make_problem(tasks, nodes, seed, "inconsistent")
    start = np.random.default_rng(seed).integers(0, nodes, tasks)
    assert makespan(p, improve(p, start)) <= makespan(p, start) * (1 + 1e-12)


def test_atsa_beats_the_greedy_baselines_and_the_paper_colony_beats_fcfs():
    p = make_problem(60, 6, seed=0, etc="inconsistent")
    spans = {n: makespan(p, schedule(p, n, **FAST.get(n, {})).assignment) for n in SCHEDULERS}
    assert spans["atsa"] <= min(spans["lpt"], spans["minmin"], spans["sufferage"])
    assert spans["atsa_paper"] < spans["fcfs"]


def test_schedulers_are_reproducible_from_the_seed():
    p = make_problem(30, 4, seed=1, etc="inconsistent")
    for name in ("atsa", "atsa_paper", "aco", "pso"):
        a = schedule(p, name, seed=3, **FAST[name]).assignment
        b = schedule(p, name, seed=3, **FAST[name]).assignment
        np.testing.assert_array_equal(a, b)


# --- sliding window -------------------------------------------------------------------------


def test_one_window_is_the_batch_schedule_shifted_to_the_last_arrival():
    p = make_problem(20, 3, seed=4)
    arrivals = arrival_times_s(p, seed=4)
    result = run_stream(p, arrivals, 20, lambda sub: schedule(sub, "lpt"), lambda: 0.0)
    batch = schedule(p, "lpt").assignment
    np.testing.assert_array_equal(result.assignment, batch)
    assert stream_metrics(p, result)["makespan"] == pytest.approx(arrivals[-1] + makespan(p, batch))


def test_windows_keep_the_backlog_and_stay_above_the_stream_bound():
    p = make_problem(60, 4, seed=2, etc="inconsistent")
    arrivals = arrival_times_s(p, seed=2, load=3.0)  # overloaded: backlog carries over
    bound = stream_lower_bound(p, arrivals, 15)
    for name in ("fcfs", "lpt", "atsa"):
        run = lambda sub, name=name: schedule(sub, name, **FAST.get(name, {}))  # noqa: E731
        res = run_stream(p, arrivals, 15, run, lambda: 0.0)
        metrics = stream_metrics(p, res)
        assert res.windows == 4
        assert metrics["makespan"] >= bound * (1 - 1e-9)
        assert metrics["makespan"] > arrivals[-1]


# --- the study and the CLI ------------------------------------------------------------------


def test_study_rows_share_the_instance_bound():
    study = ScheduleStudy(
        tasks=12, nodes=(3,), algorithms=("lpt", "milp"), seeds=2, params={"milp": FAST["milp"]}
    )
    rows = list(compare_schedulers(study))
    assert len(rows) == 4 and all(tuple(r) == ROW_KEYS for r in rows)
    milp = [r for r in rows if r["algorithm"] == "milp"]
    assert all(r["proven_optimal"] and r["gap"] == pytest.approx(0, abs=1e-6) for r in milp)
    assert all(r["gap"] >= -1e-9 for r in rows)


def test_cli_json_has_one_object_per_run(capsys):
    rc = main(
        ["schedule", "--tasks", "12", "--nodes", "2,3", "--algorithms", "fcfs,lpt,milp",
         "--seeds", "2", "--etc", "consistent,inconsistent", "--json", "--milp-time-limit", "5"]
    )  # fmt: skip
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 * 2 * 2 * 2
    for row in rows:
        assert set(ROW_KEYS) == set(row)
        assert {"algorithm", "nodes", "seed", "etc", "makespan", "lower_bound", "gap"} <= set(row)
        assert row["runtime_s"] >= 0
        assert row["makespan"] >= row["lower_bound"] * (1 - 1e-9)


def test_cli_table_and_window(capsys):
    rc = main(["schedule", "--tasks", "30", "--nodes", "3", "--algorithms", "fcfs,lpt",
               "--window", "10"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "fcfs" in out and "lpt" in out and "gap_%" in out


@pytest.mark.parametrize(
    ("args", "field", "value"),
    [
        (["--algorithms", "atsa,magic"], "--algorithms", "'magic'"),
        (["--nodes", "10,x"], "--nodes", "'10,x'"),
        (["--nodes", "0"], "--nodes", "'0'"),
        (["--etc", "chaotic"], "--etc", "'chaotic'"),
        (["--window", "0"], "--window", "0"),
    ],
)
def test_cli_errors_name_the_argument_the_value_and_what_is_allowed(capsys, args, field, value):
    assert main(["schedule", "--tasks", "5", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"fedge: error: {field}: got {value}; allowed:")
    if field == "--algorithms":
        assert "atsa_paper" in err and "milp" in err

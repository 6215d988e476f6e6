"""The scheduling study: every figure is recomputed here from the schedule it wrote
(tasks.csv), the edges' compute profiles and the window model, not from its own code."""

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from fedge.core.errors import ConfigError
from fedge.experiment.config import load_config
from fedge.results import read_rows_csv
from fedge.runs import run_experiment
from fedge.runs.study import check_study

ROOT = Path(__file__).parents[2]
BASE = """
name = "sched"
seed = 2
study = "scheduling"

[study_params]
tasks = 30
window = 10
arrival_rate_per_s = 400.0
"""
WALL_CLOCK = ("scheduler_runtime_ms", "wall_time_s")


def write_config(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    path = tmp_path / "sched.toml"
    out = f'[output]\nplots = false\nprogress = false\ndir = "{runs.as_posix()}"\n'
    path.write_text(BASE + out + f'store = "{(runs / "fedge.sqlite").as_posix()}"\n')
    return path


def topology(tmp_path: Path, flops: list[float], name: str = "topo.toml") -> list[str]:
    """Overrides for a topology file with one edge per FLOP/s value (and one device each)."""
    lines = []
    for i, f in enumerate(flops):
        lines += ["[[edges]]", f"x_m = {i * 1000.0}", "y_m = 0.0", "coverage_m = 600.0"]
        lines += [f"flops_per_s = {f}"]
    for i in range(len(flops)):
        lines += ["[[devices]]", f"x_m = {i * 1000.0 + 10.0}", "y_m = 0.0"]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return ["system.topology='file'", f"system.topology_file='{path.as_posix()}'"]


HIGHWAY = ["system.edges=3", "system.devices=6"]  # edges of 1e12 FLOP/s each


def run(tmp_path: Path, *overrides: str):
    result = run_experiment(load_config(write_config(tmp_path), list(overrides)))
    return result, read_rows_csv(result.run_dir / "tasks.csv")


def recompute(tasks, speeds_gflops):
    """Each window's figures from the schedule: an edge starts the window's tasks, in
    arrival order, when the window's last task has arrived and it has finished earlier work."""
    busy = defaultdict(float)
    out = []
    for step in sorted({t["step"] for t in tasks}):
        mine = sorted((t for t in tasks if t["step"] == step), key=lambda t: t["task"])
        release = max(t["arrival_s"] for t in mine)
        carried = any(busy[edge] > release for edge in speeds_gflops)
        loads, starts, execs = {}, [], []
        for edge, speed in speeds_gflops.items():
            clock = max(release, busy[edge])
            for t in (t for t in mine if t["edge"] == edge):
                starts.append(clock)
                execs.append(t["gflop"] / speed)
                clock += t["gflop"] / speed
                busy[edge] = clock
            loads[edge] = clock - release
        load = np.array(list(loads.values()))
        arrivals = [t["arrival_s"] for e in speeds_gflops for t in mine if t["edge"] == e]
        out.append(
            {
                "sim_time_s": release,
                "makespan_s": load.max(),
                "exec_time_s": sum(execs),
                "load_imbalance": (load.max() - load.min()) / load.mean(),
                "mean_wait_s": float(np.mean(np.array(starts) - np.array(arrivals))),
                "finish_time_s": max(busy.values()),
                "backlog": carried,
            }
        )
    return out


def test_every_task_once_and_each_window_follows_its_schedule(tmp_path):
    speeds = {"edge0": 1000.0, "edge1": 2000.0, "edge2": 4000.0}
    result, tasks = run(tmp_path, *topology(tmp_path, [s * 1e9 for s in speeds.values()]))
    assert sorted(t["task"] for t in tasks) == list(range(30))
    assert [t["step"] for t in sorted(tasks, key=lambda t: t["task"])] == [
        i // 10 + 1 for i in range(30)
    ]
    assert {t["edge"] for t in tasks} <= set(speeds)
    expected = recompute(tasks, speeds)
    assert any(w["backlog"] for w in expected), "the arrival rate must make backlogs carry over"
    assert len(result.rows) == 3
    for row, want in zip(result.rows, expected, strict=True):
        assert row["tasks"] == 10
        for key in ("sim_time_s", "makespan_s", "exec_time_s", "mean_wait_s", "finish_time_s"):
            assert row[key] == pytest.approx(want[key], rel=1e-9), key
        assert row["load_imbalance"] == pytest.approx(want["load_imbalance"], abs=1e-9)
        assert row["scheduler_runtime_ms"] >= 0
    times = [row["sim_time_s"] for row in result.rows]
    assert times == sorted(times) and result.summary["total_tasks"] == 30
    total = sum(w["exec_time_s"] for w in expected)
    assert result.summary["total_exec_time_s"] == pytest.approx(total)


def test_fcfs_on_equal_edges_matches_the_hand_computed_schedule(tmp_path):
    # 30 tasks of 1000 GFLOP (1 s on a 1 TFLOP/s edge) arrive within ~1e-4 s; FCFS gives
    # each to the edge free first, lowest id on ties, so the windows fill round-robin.
    params = ["study_params.scheduler='fcfs'", "study_params.gflop_min=1000.0"]
    params += ["study_params.gflop_max=1000.0", "study_params.arrival_rate_per_s=1e6"]
    result, tasks = run(tmp_path, *HIGHWAY, *params)
    by_task = sorted(tasks, key=lambda t: t["task"])
    windows = [[0, 1, 2, 0, 1, 2, 0, 1, 2, 0], [1, 2, 0, 1, 2, 0, 1, 2, 0, 1]]
    windows += [[2, 0, 1, 2, 0, 1, 2, 0, 1, 2]]
    assert [int(t["edge"].removeprefix("edge")) for t in by_task] == [
        edge for window in windows for edge in window
    ]
    # edge completion times after each window: (4, 3, 3), (7, 7, 6), (10, 10, 10)
    hand = {
        "makespan_s": [4.0, 7.0, 10.0],
        "finish_time_s": [4.0, 7.0, 10.0],
        "exec_time_s": [10.0, 10.0, 10.0],
        "load_imbalance": [1 / (10 / 3), 1 / (20 / 3), 0.0],
        "mean_wait_s": [12 / 10, 45 / 10, 78 / 10],
    }
    for key, values in hand.items():
        assert [row[key] for row in result.rows] == pytest.approx(values, abs=1e-3), key


def test_same_seed_same_rows_another_seed_other_tasks(tmp_path):
    def comparable(rows):
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in rows]

    first, tasks = run(tmp_path, *HIGHWAY)
    again, tasks_again = run(tmp_path, *HIGHWAY)
    assert comparable(first.rows) == comparable(again.rows) and tasks == tasks_again
    _, other_tasks = run(tmp_path, *HIGHWAY, "seed=3")
    assert [t["arrival_s"] for t in other_tasks] != [t["arrival_s"] for t in tasks]
    assert [t["gflop"] for t in other_tasks] != [t["gflop"] for t in tasks]
    by_path, _ = run(tmp_path, *HIGHWAY, "study='fedge.studies.scheduling:SCHEDULING'")
    assert comparable(by_path.rows) == comparable(first.rows)


def test_tasks_run_at_the_speed_of_their_edge_in_the_system_model(tmp_path):
    for scale, name in ((1.0, "slow.toml"), (2.0, "fast.toml")):
        flops = [scale * 1e12, scale * 2e12, scale * 4e12]
        _, tasks = run(tmp_path, *topology(tmp_path, flops, name))
        for t in tasks:
            speed_gflops = flops[int(t["edge"].removeprefix("edge"))] / 1e9
            assert t["finish_s"] - t["start_s"] == pytest.approx(t["gflop"] / speed_gflops)
    # devices do not run the tasks: their profile changes nothing
    base, _ = run(tmp_path, *HIGHWAY)
    slow_devices = ["system.device.gflops_min=1.0", "system.device.gflops_max=2.0"]
    changed, _ = run(tmp_path, *HIGHWAY, *slow_devices)
    for a, b in zip(base.rows, changed.rows, strict=True):
        assert {k: v for k, v in a.items() if k not in WALL_CLOCK} == {
            k: v for k, v in b.items() if k not in WALL_CLOCK
        }


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("study_params.window=31", "study_params.window"),
        ("study_params.gflop_max=0.5", "study_params.gflop_max"),
        ("study_params.arrival_rate_per_s=0", "study_params.arrival_rate_per_s"),
        ("study_params.scheduler='fifo'", "study_params.scheduler"),
        ("study_params.scheduler_params={ antz = 3 }", "study_params.scheduler_params parameter"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, override, field):
    with pytest.raises(ConfigError) as info:
        check_study(load_config(write_config(tmp_path), [override]))
    assert info.value.field == field


def test_the_example_config_is_valid_and_runs(tmp_path):
    path = ROOT / "examples" / "atsa" / "study.toml"
    _, settings = check_study(load_config(path))
    assert settings.scheduler == "atsa" and settings.tasks >= 10 * settings.window
    out = [f"output.dir='{(tmp_path / 'runs').as_posix()}'", "output.plots=false"]
    out += [f"output.store='{(tmp_path / 'runs' / 's.sqlite').as_posix()}'"]
    result = run_experiment(load_config(path, [*out, "study_params.tasks=200"]), progress=False)
    assert result.summary["steps"] == 2 and result.summary["total_tasks"] == 200

"""Resuming runs whose device state lives partly on disk, and runs on a federated dataset."""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_resume import (
    Interrupted,
    assert_resumed_like,
    assert_same,
    assert_same_model,
    final_checkpoint,
    interrupt_in_round,
    only_run_dir,
    strip_wall,
)

from fedge.core.errors import ConfigError
from fedge.core.population import STATE_FILE
from fedge.experiment import load_config
from fedge.experiment.build import build
from fedge.runs import resume_experiment, run_experiment
from fedge.runs.checkpoint import CHECKPOINT_NAME, read_checkpoint_header

FEEDBACK = [
    "rounds=4",
    "federation.clients_per_round=6",
    "compression=[{link='device-cloud', method='topk', ratio=0.05, error_feedback=true}]",
]
TINY_BUDGET = "population.state_memory_mb=0.000001"


def _cut_and_resume(config, sets, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_in_round(patch, 3, after_deliveries=4)
        with pytest.raises(Interrupted):
            run_experiment(load_config(config, sets), out_dir=tmp_path / "cut")
    run_dir = only_run_dir(tmp_path / "cut")
    assert read_checkpoint_header(run_dir / CHECKPOINT_NAME)["round"] == 2
    return run_dir


def _rows(run_dir):
    db = sqlite3.connect(run_dir / STATE_FILE)
    try:
        return {k for (k,) in db.execute("SELECT id FROM state")}
    finally:
        db.close()


def _device_states(run_dir):
    """Every device's state in the run's last checkpoint, read back from its store."""
    nodes = final_checkpoint(run_dir).nodes
    nodes.apps.attach(run_dir)
    return {d: nodes.apps[d].state for d in nodes.apps if d.startswith("dev")}


@pytest.mark.slow
def test_a_run_with_evictions_resumes_bit_identical(tiny_config, tmp_path, monkeypatch):
    """Every delivery of the cut run spills its device's residual. Round 3 read some rows of
    checkpoint 2 back and wrote new ones, uncommitted when it stopped (as in a crash): the
    store holds exactly checkpoint 2's rows, and the resume reads the round-2 states from
    them. It ends like the uninterrupted run with the budget and without one."""
    sets = [*FEEDBACK, TINY_BUDGET]
    full = run_experiment(load_config(tiny_config, sets), out_dir=tmp_path / "full")
    unlimited = run_experiment(load_config(tiny_config, FEEDBACK), out_dir=tmp_path / "plain")
    run_dir = _cut_and_resume(tiny_config, sets, tmp_path, monkeypatch)
    checkpoint = final_checkpoint(run_dir)
    spill = checkpoint.nodes.apps.spill
    assert spill.evictions > 0 and spill.spilled
    assert set(spill.spilled.values()) == _rows(run_dir)
    resumed = resume_experiment(run_dir)
    assert _rows(run_dir) >= set(final_checkpoint(run_dir).nodes.apps.spill.spilled.values())
    assert strip_wall(resumed.rows) == strip_wall(full.rows) == strip_wall(unlimited.rows)
    assert_same_model(full.run_dir, resumed.run_dir)
    assert_same_model(unlimited.run_dir, resumed.run_dir)
    states = _device_states(resumed.run_dir)
    assert any(states.values())
    assert_same(_device_states(full.run_dir), states, "device states")
    assert_same(_device_states(unlimited.run_dir), states, "device states (no budget)")


def test_old_rows_go_once_the_next_checkpoint_is_written(tiny_config, tmp_path):
    """After a run, its store holds exactly the rows its last checkpoint refers to."""
    result = run_experiment(load_config(tiny_config, [*FEEDBACK, TINY_BUDGET]))
    spill = final_checkpoint(result.run_dir).nodes.apps.spill
    assert spill.restores > 0
    assert _rows(result.run_dir) == set(spill.spilled.values())


SYN = """
name = "syn"
seed = 0
rounds = 4
algorithm = "fedavg"
[data]
dataset = "leaf_synthetic"
[data.synthetic]
max_samples = 120
test_clients = 10
[model]
name = "logistic"
[training]
lr = 0.05
batch_size = 10
[federation]
clients_per_round = 5
[system]
edges = 2
devices = 40
out_of_coverage = "nearest"
[output]
progress = false
plots = false
"""


@pytest.fixture
def synthetic_config(tmp_path: Path) -> Path:
    path = tmp_path / "syn.toml"
    store = (tmp_path / "runs" / "fedge.sqlite").as_posix()
    path.write_text(SYN + f'dir = "{(tmp_path / "runs").as_posix()}"\nstore = "{store}"\n')
    return path


@pytest.mark.parametrize("sets", [[], [*FEEDBACK[1:], TINY_BUDGET]], ids=["plain", "spilled"])
def test_a_synthetic_run_resumes_bit_identical(synthetic_config, tmp_path, monkeypatch, sets):
    """Clients made from (seed, index) come back the same in the resumed process."""
    full = run_experiment(load_config(synthetic_config, sets), out_dir=tmp_path / "full")
    run_dir = _cut_and_resume(synthetic_config, sets, tmp_path, monkeypatch)
    resumed = resume_experiment(run_dir)
    if sets:
        assert_same_model(full.run_dir, resumed.run_dir)
        assert strip_wall(resumed.rows) == strip_wall(full.rows)
        assert_same(_device_states(full.run_dir), _device_states(resumed.run_dir))
    else:
        assert_resumed_like(full, resumed, tmp_path)


def test_bad_budgets_are_refused(tiny_config, tmp_path):
    cmd = [sys.executable, "-m", "fedge.cli", "run", str(tiny_config)]
    proc = subprocess.run(
        [*cmd, "--set", "population.state_memory_mb=0"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "population.state_memory_mb" in proc.stderr and "greater than 0" in proc.stderr
    with pytest.raises(ConfigError, match=r"population\.state_memory_mb"):
        load_config(tiny_config, ["population.state_memory_mb='lots'"])
    with pytest.raises(ConfigError, match=r"population\.state_memory_mb.*'splitfed'"):
        build(load_config(tiny_config, ["algorithm='splitfed'", "population.state_memory_mb=1"]))
    with pytest.raises(ConfigError, match=r"population\.state_memory_mb.*'grpc'"):
        build(load_config(tiny_config, ["engine='grpc'", "population.state_memory_mb=1"]))

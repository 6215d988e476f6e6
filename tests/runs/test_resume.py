"""An interrupted run resumed from its checkpoint ends bit-identical to an uninterrupted one."""

import json
import math
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import fedge
from fedge.algorithms import FedAvg
from fedge.cli import main
from fedge.core.errors import FedgeError
from fedge.experiment import load_config
from fedge.experiment.build import build
from fedge.results import RunStore
from fedge.runs import CheckpointError, resume, resume_experiment, run_experiment
from fedge.runs import run as run_module
from fedge.runs.checkpoint import (
    CHECKPOINT_NAME,
    is_static,
    load_checkpoint,
    read_checkpoint_header,
)
from fedge.runtime import NodeSet


class Interrupted(Exception):
    """Stands for Ctrl-C / a crash in the middle of a round."""


def strip_wall(obj):
    """Rows or a summary without wall times, as JSON text (NaN compares equal to NaN)."""
    if isinstance(obj, list):
        return [strip_wall(row) for row in obj]
    return json.dumps({k: v for k, v in obj.items() if "wall_time" not in k}, sort_keys=True)


def interrupt_in_round(monkeypatch, round_index, after_deliveries=2):
    """Raise from inside round ``round_index`` once some nodes have already handled it."""
    original = NodeSet.deliver
    seen = [0]

    def deliver(self, message, downstream):
        reply = original(self, message, downstream)
        if message.round == round_index:
            seen[0] += 1
            if seen[0] >= after_deliveries:
                raise Interrupted(f"round {round_index}")
        return reply

    monkeypatch.setattr(NodeSet, "deliver", deliver)


def only_run_dir(root):
    dirs = [p for p in Path(root).iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def final_checkpoint(run_dir):
    """The live objects of a finished run as its last checkpoint holds them."""
    point = resume.resume_point(run_dir)
    refs = resume.references(build(point.config))
    meta = resume.checkpoint_meta(point.config, point.run_id)
    return load_checkpoint(run_dir / CHECKPOINT_NAME, refs, meta)[0]


def _same_leaf(a, b, path):
    """Compare values that hold no further objects; False when ``a`` is a container."""
    if isinstance(a, torch.nn.Module):
        assert a.state_dict().keys() == b.state_dict().keys(), path
        for key, tensor in a.state_dict().items():
            assert torch.equal(tensor, b.state_dict()[key]), f"{path}.{key}"
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), path
    elif isinstance(a, np.random.Generator):
        assert a.bit_generator.state == b.bit_generator.state, path
    elif isinstance(a, float):
        assert a == b or (math.isnan(a) and math.isnan(b)), f"{path}: {a} != {b}"
    elif is_static(a) or (callable(a) and not hasattr(a, "__dict__")):
        pass  # built from the config in each process
    elif not isinstance(a, dict | list | tuple | types.MethodType) and not hasattr(a, "__dict__"):
        assert a == b, f"{path}: {a!r} != {b!r}"
    else:
        return False
    return True


def assert_same(a, b, path="$", seen=None):
    """Deep equality of two object graphs: tensors bit for bit, floats exactly (NaN = NaN)."""
    seen = set() if seen is None else seen
    if (id(a), id(b)) in seen:
        return
    seen.add((id(a), id(b)))
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if _same_leaf(a, b, path):
        return
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        pairs = [(f"{path}[{k!r}]", a[k], b[k]) for k in a]
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        pairs = [(f"{path}[{i}]", x, y) for i, (x, y) in enumerate(zip(a, b, strict=True))]
    elif isinstance(a, types.MethodType):
        assert a.__func__ is b.__func__, path
        pairs = [(f"{path}.__self__", a.__self__, b.__self__)]
    else:
        pairs = [(f"{path}.", vars(a), vars(b))]
    for where, x, y in pairs:
        assert_same(x, y, where, seen)


def load_model(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)


def assert_same_model(dir_a, dir_b):
    a, b = load_model(dir_a), load_model(dir_b)
    assert a.keys() == b.keys()
    for key, tensor in a.items():
        assert torch.equal(tensor, b[key]), key


def assert_resumed_like(full, resumed, tmp_path):
    """Same rows, summary files, store rows and final live objects (model, apps, clock...)."""
    assert resumed.run_dir != full.run_dir
    assert strip_wall(resumed.rows) == strip_wall(full.rows)
    assert strip_wall(resumed.summary) == strip_wall(full.summary)
    files = [json.loads((r.run_dir / "summary.json").read_text()) for r in (full, resumed)]
    assert strip_wall(files[0]) == strip_wall(files[1])
    assert resumed.rows[-1]["sim_time_s"] == full.rows[-1]["sim_time_s"]
    with RunStore(tmp_path / "runs" / "fedge.sqlite") as store:
        run = store.get_run(resumed.run_id)
        assert run["status"] == "finished"
        assert strip_wall(store.rounds(resumed.run_id)) == strip_wall(resumed.rows)
    a, b = final_checkpoint(full.run_dir), final_checkpoint(resumed.run_dir)
    assert a.round == b.round == full.rows[-1]["round"]
    assert_same_model(full.run_dir, resumed.run_dir)
    assert_same(a.state, load_model(resumed.run_dir), "model.pt")
    for name in ("state", "coordinator", "rng", "transport", "nodes"):
        assert_same(getattr(a, name), getattr(b, name), name)


CASES = {
    "fedadam": ["algorithm='fedadam'", "rounds=4"],
    "hierarchical_mobility_dropouts": [
        "algorithm='hierarchical'",
        "rounds=4",
        "system.mobility='highway'",
        "system.wan.bandwidth_mbps=0.1",
        "system.dropout_prob=0.3",
    ],
    "msfl": ["algorithm='msfl'", "rounds=4"],
    "dpmn": ["algorithm='dpmn'", "rounds=4", "system.devices=6"],
    "splitfed": ["algorithm='splitfed'", "rounds=3"],
    "secure_aggregation": ["secure_aggregation.enabled=true", "rounds=4"],
    "hierarchical_compressed": [
        "algorithm='hierarchical'",
        "rounds=4",
        "compression=[{link='device-edge', method='topk', ratio=0.05},"
        " {link='edge-cloud', method='qsgd', levels=7}]",
    ],
    "hierarchical_attacked_defended": [  # detection histories travel in checkpoints
        "algorithm='hierarchical'",
        "rounds=4",
        "data.validation_size=30",
        "defence.detection='validation'",
        "defence.norm_bound=2.0",
        "attack=[{kind='sign_flip', share=0.3, scale=3.0},"
        " {kind='backdoor', nodes=['dev0'], boost=2.0}]",
    ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_run_resumes_bit_identical(tiny_config, tmp_path, monkeypatch, case):
    sets = CASES[case]
    full = run_experiment(load_config(tiny_config, sets), out_dir=tmp_path / "full")
    with monkeypatch.context() as patch:
        interrupt_in_round(patch, 3 if case != "splitfed" else 2)
        with pytest.raises(Interrupted):
            run_experiment(load_config(tiny_config, sets), out_dir=tmp_path / "cut")
    run_dir = only_run_dir(tmp_path / "cut")
    assert read_checkpoint_header(run_dir / CHECKPOINT_NAME)["round"] == (
        2 if case != "splitfed" else 1
    )
    with RunStore(tmp_path / "runs" / "fedge.sqlite") as store:
        assert store.get_run(run_dir.name)["status"] == "failed"
    resumed = resume_experiment(run_dir)
    assert resumed.run_id == run_dir.name
    if case == "hierarchical_compressed":  # error-feedback residuals travel in checkpoints
        nodes = final_checkpoint(run_dir).nodes
        assert any("transforms" in app.state for app in nodes.apps.values())
    if case == "hierarchical_mobility_dropouts":
        assert sum(r["handovers"] for r in full.rows) > 0
        assert sum(r["dropped"] for r in full.rows[-1:]) > 0
    assert_resumed_like(full, resumed, tmp_path)


def test_rows_logged_after_the_checkpoint_are_replaced(tiny_config, tmp_path, monkeypatch):
    """A crash between logging round 3 and checkpointing it: round 3 runs again, once."""
    full = run_experiment(load_config(tiny_config, ["rounds=4"]), out_dir=tmp_path / "full")
    original = resume.save_checkpoint

    def save(path, checkpoint, refs, meta):
        if checkpoint.round == 3:
            raise KeyboardInterrupt
        return original(path, checkpoint, refs, meta)

    with monkeypatch.context() as patch:
        patch.setattr(resume, "save_checkpoint", save)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(load_config(tiny_config, ["rounds=4"]), out_dir=tmp_path / "cut")
    run_dir = only_run_dir(tmp_path / "cut")
    with RunStore(tmp_path / "runs" / "fedge.sqlite") as store:
        assert store.get_run(run_dir.name)["status"] == "interrupted"
        assert [r["round"] for r in store.rounds(run_dir.name)] == [1, 2, 3]
    resumed = resume_experiment(run_dir)
    assert [r["round"] for r in resumed.rows] == [1, 2, 3, 4]
    assert_resumed_like(full, resumed, tmp_path)


def test_a_run_stopped_at_its_target_is_finished(tiny_config, tmp_path):
    result = run_experiment(load_config(tiny_config, ["target_accuracy=0.05"]))
    assert result.summary["rounds"] == 1
    with pytest.raises(FedgeError, match="already finished"):
        resume_experiment(result.run_dir)


def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(fedge.__file__).parents[1])}
    cmd = [sys.executable, "-m", "fedge.cli", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_round(root, proc, round_index, timeout_s=120.0):
    """The run directory once its checkpoint holds ``round_index`` (or later)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for path in Path(root).glob(f"*/{CHECKPOINT_NAME}"):
            if read_checkpoint_header(path)["round"] >= round_index:
                return path.parent
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint of round {round_index} within {timeout_s} s")


def test_killed_process_resumes_from_the_command_line(tiny_config, tmp_path):
    sets = ["--set", "rounds=8", "--set", "training.epochs=3", "--no-progress"]
    ref = _cli("run", str(tiny_config), *sets, "--out", str(tmp_path / "full"), cwd=tmp_path)
    assert ref.wait(timeout=300) == 0, ref.communicate()
    proc = _cli("run", str(tiny_config), *sets, "--out", str(tmp_path / "cut"), cwd=tmp_path)
    try:
        run_dir = _wait_for_round(tmp_path / "cut", proc, 2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert not (run_dir / "summary.json").exists()
    again = _cli("run", "--resume", str(run_dir), "--no-progress", cwd=tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert b"report:" in out
    full_dir = only_run_dir(tmp_path / "full")
    summaries = [json.loads((d / "summary.json").read_text()) for d in (full_dir, run_dir)]
    assert strip_wall(summaries[0]) == strip_wall(summaries[1])
    with RunStore(tmp_path / "runs" / "fedge.sqlite") as store:
        rows = [store.rounds(d.name) for d in (full_dir, run_dir)]
        assert store.get_run(run_dir.name)["status"] == "finished"
    assert strip_wall(rows[0]) == strip_wall(rows[1])
    assert_same_model(full_dir, run_dir)


@pytest.fixture
def cut_run(tiny_config, tmp_path, monkeypatch):
    """A run interrupted in round 2 (its checkpoint holds round 1)."""
    with monkeypatch.context() as patch:
        interrupt_in_round(patch, 2)
        with pytest.raises(Interrupted):
            run_experiment(load_config(tiny_config), out_dir=tmp_path / "cut")
    return only_run_dir(tmp_path / "cut")


def _unchanged_after(run_dir, error, match):
    before = (run_dir / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(error, match=match):
        resume_experiment(run_dir)
    assert (run_dir / CHECKPOINT_NAME).read_bytes() == before
    with RunStore(run_dir.parent.parent / "runs" / "fedge.sqlite") as store:
        assert store.get_run(run_dir.name)["status"] == "failed"
        assert [r["round"] for r in store.rounds(run_dir.name)] == [1]


def test_corrupt_or_truncated_checkpoint_is_refused_and_kept(cut_run):
    path = cut_run / CHECKPOINT_NAME
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    _unchanged_after(cut_run, CheckpointError, "corrupt checkpoint")
    path.write_bytes(bytes(data[:-10]))
    _unchanged_after(cut_run, CheckpointError, "truncated")
    path.write_bytes(b"not a checkpoint at all")
    _unchanged_after(cut_run, CheckpointError, "not a checkpoint")


def test_checkpoint_of_another_config_or_version_is_refused(cut_run, monkeypatch):
    config = cut_run / "config.json"
    original = config.read_text()
    changed = json.loads(original)
    changed["training"]["lr"] = 0.2
    config.write_text(json.dumps(changed))
    _unchanged_after(cut_run, CheckpointError, "config_sha256")
    config.write_text(original)
    monkeypatch.setattr(fedge, "__version__", "0.0.0+other")
    _unchanged_after(cut_run, CheckpointError, "versions")
    monkeypatch.undo()
    stale = cut_run / f".{CHECKPOINT_NAME}.99999.tmp"
    stale.write_bytes(b"half a checkpoint from a process that died while writing it")
    assert resume_experiment(cut_run).summary["rounds"] == 3
    assert not stale.exists()


def test_missing_checkpoint_or_directory_is_a_clear_error(cut_run, tmp_path):
    with pytest.raises(FedgeError, match="no such directory"):
        resume_experiment(tmp_path / "nowhere")
    (cut_run / CHECKPOINT_NAME).unlink()
    with pytest.raises(CheckpointError, match=f"{cut_run}: no {CHECKPOINT_NAME}"):
        resume_experiment(cut_run)


def test_a_run_in_use_by_another_process_is_refused(cut_run):
    with resume.RunLock(cut_run), pytest.raises(FedgeError, match="another fedge process"):
        resume_experiment(cut_run)


def test_a_run_missing_from_the_store_is_a_clear_error(cut_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = cut_run / "config.json"
    raw = json.loads(config.read_text())
    (tmp_path / "elsewhere").mkdir()
    raw["output"]["store"] = "elsewhere/fedge.sqlite"
    config.write_text(json.dumps(raw))
    with pytest.raises(FedgeError, match="is not in the run store"):
        resume_experiment(cut_run)


def test_a_run_cut_after_its_last_round_writes_its_outputs(tiny_config, tmp_path, monkeypatch):
    full = run_experiment(load_config(tiny_config), out_dir=tmp_path / "full")
    with monkeypatch.context() as patch:
        patch.setattr(run_module, "_write_outputs", lambda *a: (_ for _ in ()).throw(Interrupted()))
        with pytest.raises(Interrupted):
            run_experiment(load_config(tiny_config), out_dir=tmp_path / "cut")
    run_dir = only_run_dir(tmp_path / "cut")
    with RunStore(tmp_path / "runs" / "fedge.sqlite") as store:
        assert store.get_run(run_dir.name)["status"] == "failed"
    resumed = resume_experiment(run_dir)
    assert_resumed_like(full, resumed, tmp_path)


def test_an_object_that_cannot_be_stored_warns_and_the_run_goes_on(tiny_config, monkeypatch):
    original = FedAvg.step

    def step(self, transport, state, rng, r, rounds):
        if r == 2:
            self.made_in_a_round = lambda: None
        return original(self, transport, state, rng, r, rounds)

    monkeypatch.setattr(FedAvg, "step", step)
    with pytest.warns(RuntimeWarning, match="cannot checkpoint round 2"):
        result = run_experiment(load_config(tiny_config))
    assert result.summary["rounds"] == 3
    assert read_checkpoint_header(result.run_dir / CHECKPOINT_NAME)["round"] == 1


def test_cli_resume_stands_alone(capsys, cut_run, tiny_config):
    assert main(["run", str(tiny_config), "--resume", str(cut_run)]) == 2
    assert "--resume RUN_DIR alone" in capsys.readouterr().err
    assert main(["run", "--resume", str(cut_run), "--set", "rounds=5"]) == 2
    assert "got --set" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "allowed: CONFIG.toml, or --resume RUN_DIR" in capsys.readouterr().err
    assert main(["run", "--resume", str(cut_run), "--no-progress"]) == 0
    assert "report:" in capsys.readouterr().out
    assert main(["run", "--resume", str(cut_run)]) == 2
    assert "already finished" in capsys.readouterr().err

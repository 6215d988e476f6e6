"""Split learning as a real gRPC deployment: edges call the cloud's tail by messages.

Edge processes train their heads and send every minibatch's feature maps (and labels) to
the cloud process with calls they start; the cloud's tail answers with the cut-layer
gradients. The final model (the head the edges returned, the tail the cloud trained) and
every round's metrics must equal the local engine's bit for bit wherever the order of the
tail's batches is fixed: vanilla split (edges take turns), and SplitFed / U-shaped with one
edge. With several edges SplitFed runs them in parallel for real and weighs them by the
measured wall-clock throughput, so it is checked for what it must do, not for equality.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from deploy_helpers import deploy_config, final_model, in_process_history, same_value, same_weights
from fedge.algorithms import ALGORITHMS
from fedge.cli import main
from fedge.core.message import Message
from fedge.deploy.local import LocalDeployment
from fedge.deploy.serve import Plan
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.results import read_rows_csv
from fedge.runs.run import run_experiment

pytestmark = pytest.mark.grpc

CASES = {
    "split-2-edges": ("split", 2),
    "splitfed-1-edge": ("splitfed", 1),
    "ushaped-1-edge": ("ushaped", 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_split_deployment_ends_with_the_local_engines_model_and_rounds(
    tmp_path: Path, case: str
) -> None:
    algorithm, edges = CASES[case]
    config = deploy_config(tmp_path)
    overrides = [f"algorithm={algorithm!r}", "rounds=2", "output.plots=false"]
    overrides.append(f"system.edges={edges}")
    expected = [dict(m) for m in in_process_history(config, overrides).metrics]
    weights, rows = {}, {}
    for engine in ("local", "grpc"):
        cfg = load_config(config, [*overrides, f"engine={engine!r}"])
        result = run_experiment(cfg, out_dir=tmp_path / engine)
        weights[engine] = final_model(result.run_dir)
        rows[engine] = read_rows_csv(result.run_dir / "metrics.csv")
    initial = build(load_config(config, overrides)).initial_state
    assert any(not torch.equal(v, weights["grpc"][k]) for k, v in initial.items())
    assert same_weights(weights["grpc"], weights["local"])
    keys = sorted(expected[0])
    assert {"accuracy", "edge_accuracy", "cloud_batches", "train_loss"} <= set(keys)
    assert expected[0]["cloud_batches"] > 0  # the tail was called
    for engine, table in rows.items():
        for want, row in zip(expected, table, strict=True):
            differ = [k for k in keys if not same_value(want[k], float(row[k]))]
            assert not differ, f"{engine} differs from the in-process run in {differ}"


@pytest.mark.slow
def test_splitfed_trains_several_edges_in_parallel_and_weighs_them(tmp_path: Path) -> None:
    config = deploy_config(tmp_path)
    cfg = load_config(config, ["algorithm='splitfed'", "rounds=2", "engine='grpc'"])
    result = run_experiment(cfg, out_dir=tmp_path / "grpc")
    rows = read_rows_csv(result.run_dir / "metrics.csv")
    for row in rows:
        assert float(row["edges"]) == 2.0
        assert 0.5 <= float(row["u_weight_max"]) < 1.0  # two edges, both weighted
    assert float(rows[-1]["accuracy"]) > 0.3  # ten digit classes: well above chance
    assert (result.run_dir / "early_exit.json").exists()


def test_the_plan_of_split_learning_has_edges_calling_only_the_tail(tmp_path: Path) -> None:
    cfg = load_config(deploy_config(tmp_path), ["algorithm='splitfed'"])
    plan = Plan.of(cfg)
    assert plan.split and plan.devices == [] and plan.nodes() == ["cloud", *plan.edges]
    assert set(LocalDeployment(cfg, tmp_path / "dep").commands()) == {"cloud", *plan.edges}
    admit = plan.admit("cloud")
    e0, e1 = plan.edges
    assert admit(Message(e0, "cloud", "split_forward", 1), e0) is None
    assert "not a tail call" in str(admit(Message(e0, "cloud", "split_train", 1), e0))
    assert "may not send as" in str(admit(Message(e1, "cloud", "split_forward", 1), e0))
    assert "only the cloud" in str(admit(Message(e0, e1, "probe", 1), e0))


def test_an_algorithm_without_a_deployment_plan_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = replace(ALGORITHMS.get("fedavg"), name="odd", roles=("odd",))
    monkeypatch.setitem(ALGORITHMS._items, "odd", odd)
    config = deploy_config(tmp_path)
    code = main(["run", str(config), "--engine", "grpc", "--set", "algorithm='odd'"])
    err = capsys.readouterr().err
    assert code == 2
    assert "algorithm" in err and "odd: its roles have no deployment plan" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

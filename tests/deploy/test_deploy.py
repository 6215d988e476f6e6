"""gRPC deployments on loopback: real processes, TLS, and the faults they must survive.

Each test starts its own processes (by pid, killed by pid), waits with timeouts only, and
uses the tiny digits federation so a deployment takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy_helpers import (
    checkpoint_round,
    deploy_config,
    final_model,
    same_weights,
    wait_for,
)
from fedge.algorithms import ALGORITHMS
from fedge.cli import main
from fedge.deploy.local import LocalDeployment, deploy_local
from fedge.experiment.config import ExperimentConfig, load_config
from fedge.results import read_rows_csv
from fedge.runs.run import run_experiment

pytestmark = pytest.mark.grpc

SLOW = "training.epochs=40"
"""Rounds long enough (about a second) that a kill right after a checkpoint is mid-round."""
TIMEOUT_S = 180.0


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Callable[..., LocalDeployment]]:
    """Makes deployments under tmp_path and kills whatever they left running."""
    made: list[LocalDeployment] = []

    def make(cfg: ExperimentConfig, **options: Any) -> LocalDeployment:
        made.append(LocalDeployment(cfg, tmp_path / f"dep{len(made)}", **options))
        return made[-1]

    yield make
    for deployment in made:
        deployment.kill_all()


def _config(tmp_path: Path, algorithm: str) -> Path:
    path = deploy_config(tmp_path)
    text = path.read_text().replace('algorithm = "fedavg"', f'algorithm = "{algorithm}"')
    path.write_text(text)
    return path


def _log(deployment: LocalDeployment, name: str) -> str:
    return (deployment.directory / "logs" / f"{name}.log").read_text(errors="replace")


def _finish(deployment: LocalDeployment) -> dict[str, object]:
    try:
        assert deployment.wait_cloud(TIMEOUT_S) == 0, _log(deployment, "cloud")[-3000:]
    finally:
        deployment.stop()
    summary: dict[str, object] = json.loads((deployment.run_dir() / "summary.json").read_text())
    return summary


def test_deploy_local_writes_the_same_run_directory_as_fedge_run(tmp_path: Path, capsys) -> None:
    config = deploy_config(tmp_path, "", "plain.toml")
    code = main(["deploy-local", str(config), "--set", "rounds=2", "--out", str(tmp_path / "d")])
    assert code == 0
    out = capsys.readouterr().out
    run_dir = Path(out.strip().splitlines()[-1].removeprefix("run: "))
    for name in ("config.json", "summary.json", "metrics.csv", "report.html", "model.pt"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["bytes_up"] > 0 and 0 < summary["accuracy"] <= 1


def test_a_device_killed_mid_round_is_skipped_and_the_run_goes_on(tmp_path: Path, deploy) -> None:
    config = _config(tmp_path, "fedavg")
    overrides = [SLOW, "system.devices=4", "federation.clients_per_round=4", "rounds=3"]
    deployment = deploy(load_config(config, overrides), devices_per_process=1)
    deployment.start_all()
    run_dir = deployment.run_dir(TIMEOUT_S)
    wait_for(lambda: checkpoint_round(run_dir) >= 1, TIMEOUT_S, "round 1")
    victim = sorted(deployment.groups)[-1]
    deployment.kill(victim)
    summary = _finish(deployment)
    assert summary["rounds"] == 3
    rows = read_rows_csv(run_dir / "metrics.csv")
    assert [r["participants"] for r in rows] == [4, 3, 3]
    assert "detached" in _log(deployment, "cloud")


def test_an_edge_killed_hands_its_devices_to_a_neighbour(tmp_path: Path, deploy) -> None:
    config = _config(tmp_path, "hierarchical")
    deployment = deploy(load_config(config, [SLOW, "rounds=3", "grpc.failover_s=0.5"]))
    deployment.start_all()
    run_dir = deployment.run_dir(TIMEOUT_S)
    wait_for(lambda: checkpoint_round(run_dir) >= 1, TIMEOUT_S, "round 1")
    dead, alive = deployment.plan.edges[1], deployment.plan.edges[0]
    moved = deployment.plan.children(dead)
    deployment.kill(dead)
    summary = _finish(deployment)
    assert summary["rounds"] == 3
    log = _log(deployment, alive)
    assert all(f"device {d} attached" in log for d in moved)
    rows = read_rows_csv(run_dir / "metrics.csv")
    assert rows[-1]["edges"] == 1 and rows[-1]["participants"] == len(deployment.plan.devices)


def test_a_killed_cloud_resumes_from_its_checkpoint_and_ends_with_the_same_model(
    tmp_path: Path, deploy
) -> None:
    config = _config(tmp_path, "hierarchical")
    overrides = [SLOW, "rounds=3", "system.edges=1"]
    reference = run_experiment(load_config(config, overrides), out_dir=tmp_path / "ref")
    deployment = deploy(load_config(config, overrides))
    deployment.start_all()
    run_dir = deployment.run_dir(TIMEOUT_S)
    wait_for(lambda: checkpoint_round(run_dir) >= 1, TIMEOUT_S, "round 1")
    deployment.kill("cloud")
    deployment.start("cloud", ["--resume", str(run_dir)])
    summary = _finish(deployment)
    assert summary["rounds"] == 3
    assert same_weights(final_model(run_dir), final_model(reference.run_dir))
    assert "resum" in _log(deployment, "cloud").lower()


def test_a_killed_edge_restarts_from_its_state_and_no_round_is_lost(tmp_path: Path, deploy) -> None:
    config = _config(tmp_path, "hierarchical")
    overrides = [SLOW, "rounds=3", "system.edges=1", "grpc.reattach_s=60"]
    reference = run_experiment(load_config(config, overrides), out_dir=tmp_path / "ref")
    deployment = deploy(load_config(config, overrides))
    deployment.start_all()
    run_dir = deployment.run_dir(TIMEOUT_S)
    wait_for(lambda: checkpoint_round(run_dir) >= 1, TIMEOUT_S, "round 1")
    edge = deployment.plan.edges[0]
    deployment.kill(edge)
    deployment.start(edge)
    summary = _finish(deployment)
    assert summary["rounds"] == 3
    assert same_weights(final_model(run_dir), final_model(reference.run_dir))
    assert "restored its state" in _log(deployment, edge)


def test_edges_keep_training_while_the_cloud_is_away_and_resynchronise(
    tmp_path: Path, deploy
) -> None:
    config = _config(tmp_path, "hierarchical")
    overrides = [SLOW, "rounds=3", "grpc.dormant_after_s=1.0"]
    deployment = deploy(load_config(config, overrides))
    deployment.start_all()
    run_dir = deployment.run_dir(TIMEOUT_S)
    wait_for(lambda: checkpoint_round(run_dir) >= 1, TIMEOUT_S, "round 1")
    deployment.kill("cloud")
    edge = deployment.plan.edges[0]
    wait_for(lambda: "round 1 alone" in _log(deployment, edge), 60.0, "a round alone")
    deployment.start("cloud", ["--resume", str(run_dir)])
    summary = _finish(deployment)
    assert summary["rounds"] == 3
    assert "resynchronising" in _log(deployment, edge)


def test_deploy_local_rejects_algorithms_it_cannot_run(
    tmp_path: Path, deploy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every registered algorithm has a plan; one whose roles have none is refused."""
    odd = dataclasses.replace(ALGORITHMS.get("fedavg"), name="odd", roles=("odd",))
    monkeypatch.setitem(ALGORITHMS._items, "odd", odd)
    config = _config(tmp_path, "odd")
    with pytest.raises(Exception, match="on the grpc engine one of"):
        deploy_local(load_config(config))


def test_serve_and_certs_name_what_is_missing(tmp_path: Path, capsys) -> None:
    config = str(_config(tmp_path, "hierarchical"))
    assert main(["serve", "edge", "--config", config, "--id", "edge0", "--insecure"]) == 2
    assert "--parent" in capsys.readouterr().err
    assert main(["serve", "device", "--config", config, "--id", "nobody", "--insecure",
                 "--parent", "127.0.0.1:1"]) == 2  # fmt: skip
    assert "device ids among dev" in capsys.readouterr().err
    assert main(["serve", "cloud", "--config", config]) == 2
    assert "no certificates" in capsys.readouterr().err
    assert main(["certs", str(tmp_path / "c")]) == 2
    assert main(["certs", str(tmp_path / "c"), "--config", config, "--nodes", "extra"]) == 0
    made = sorted(p.name for p in (tmp_path / "c").glob("*.pem"))
    assert made == sorted(["ca.pem", "cloud.pem", "edge0.pem", "edge1.pem", "extra.pem"]
                          + [f"dev{i}.pem" for i in range(10)])  # fmt: skip


def test_multi_server_fl_exchanges_between_edge_processes_as_on_the_local_engine(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, "msfl")
    cfg = load_config(config, ["rounds=2", "federation.interserver='spaa'"])
    local = run_experiment(cfg, out_dir=tmp_path / "local")
    run_dir, summary = deploy_local(cfg.model_copy(update={"engine": "grpc"}), tmp_path / "g")
    assert summary["rounds"] == 2
    keys = ("accuracy", "accuracy_min", "accuracy_max", "accepted_peers", "participants")
    deployed = read_rows_csv(run_dir / "metrics.csv")
    assert [[r[k] for k in keys] for r in deployed] == [[r[k] for k in keys] for r in local.rows]
    assert all(r["accepted_peers"] >= 1 for r in deployed)

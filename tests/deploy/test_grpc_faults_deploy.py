"""A gRPC deployment under real network faults: every child→parent link goes through a
``LinkProxy`` that cuts, delays and flaps it while every process stays alive (and, in the
soak test, processes are also killed with SIGKILL and restarted).

Each test starts its own processes (killed by pid), waits with timeouts only, and uses the
tiny digits federation. The soak test checks the whole story: 20 mixed faults, no lost
round, the same accuracy as the fault-free run within one point.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy_helpers import deploy_config, wait_for
from fedge.deploy.faults import FAULTS_LOG, SURVIVALS, Fault, FaultInjector, mixed_faults
from fedge.deploy.local import LocalDeployment
from fedge.experiment.config import ExperimentConfig, load_config
from fedge.results import read_rows_csv
from fedge.runs.run import run_experiment

pytestmark = [pytest.mark.grpc, pytest.mark.slow]

TIMEOUT_S = 240.0
WAN_S = 0.1
"""Latency of every healthy link, each way: rounds last long enough to be hit mid-way."""


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Callable[..., LocalDeployment]]:
    """Makes deployments with link proxies under tmp_path; kills what they left running."""
    made: list[LocalDeployment] = []

    def make(cfg: ExperimentConfig, **options: Any) -> LocalDeployment:
        options.setdefault("link_latency_s", WAN_S)
        made.append(LocalDeployment(cfg, tmp_path / f"dep{len(made)}", faults=True, **options))
        return made[-1]

    yield make
    for deployment in made:
        deployment.kill_all()


def _config(tmp_path: Path, overrides: list[str]) -> ExperimentConfig:
    path = deploy_config(tmp_path)
    path.write_text(path.read_text().replace('algorithm = "fedavg"', 'algorithm = "hierarchical"'))
    return load_config(path, overrides)


def _log(deployment: LocalDeployment, name: str) -> str:
    return (deployment.directory / "logs" / f"{name}.log").read_text(errors="replace")


def _finish(
    deployment: LocalDeployment, timeout_s: float = TIMEOUT_S
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Wait for the cloud; the summary and the rows, checked for lost rounds."""
    try:
        assert deployment.wait_cloud(timeout_s) == 0, _log(deployment, "cloud")[-3000:]
    finally:
        deployment.stop()
    run_dir = deployment.run_dir()
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    rows = read_rows_csv(run_dir / "metrics.csv")
    assert [r["round"] for r in rows] == list(range(1, deployment.cfg.rounds + 1))
    return summary, rows


def test_edges_cut_off_from_a_live_cloud_train_alone_and_resynchronise(
    tmp_path: Path, deploy
) -> None:
    cfg = _config(tmp_path, ["rounds=4", "grpc.dormant_after_s=1.0", "grpc.reattach_s=30"])
    deployment = deploy(cfg)
    deployment.start_all()
    wait_for(lambda: deployment.completed_round() >= 1, TIMEOUT_S, "round 1")
    uplinks = [f"{edge}->cloud" for edge in deployment.plan.edges]
    assert deployment.proxies is not None
    for link in uplinks:
        deployment.proxies.cut(link)
    for edge in deployment.plan.edges:
        wait_for(lambda e=edge: "round 1 alone" in _log(deployment, e), 60.0, f"{edge} alone")
    assert deployment.processes["cloud"].poll() is None  # the cloud lived through it
    for link in uplinks:
        deployment.proxies.restore(link)
    summary, rows = _finish(deployment)
    assert summary["rounds"] == 4
    assert all(r["edges"] >= 1 for r in rows)  # no round ran with nobody
    for edge in deployment.plan.edges:
        assert "resynchronising" in _log(deployment, edge)
    cloud = _log(deployment, "cloud")
    assert all(cloud.count(f"edge {e} attached from") >= 2 for e in deployment.plan.edges)


def test_a_flapping_device_link_is_survived_by_reattaching(tmp_path: Path, deploy) -> None:
    cfg = _config(tmp_path, ["rounds=6", "grpc.failover_s=30", "grpc.reattach_s=10"])
    deployment = deploy(cfg)
    deployment.start_all()
    group = sorted(deployment.groups)[0]
    wait_for(lambda: deployment.completed_round() >= 1, TIMEOUT_S, "round 1")
    injector = FaultInjector(deployment, [Fault("flap", group, 3.0)], tmp_path / FAULTS_LOG)
    record = injector.inject(injector.faults[0])
    assert record.survived and record.survived_by == ("reattach",)
    summary, rows = _finish(deployment)
    assert summary["rounds"] == 6 and all(r["edges"] >= 1 for r in rows)
    home = deployment.plan.parents(deployment.groups[group][0])[0]
    device = deployment.groups[group][0]
    assert _log(deployment, home).count(f"device {device} attached") >= 2
    assert json.loads((tmp_path / FAULTS_LOG).read_text())["kind"] == "flap"


def test_a_slow_wan_makes_an_edge_a_straggler_and_the_round_completes(
    tmp_path: Path, deploy
) -> None:
    cfg = _config(tmp_path, ["rounds=5", "federation.deadline_s=20", "grpc.heartbeat_s=60"])
    deployment = deploy(cfg)
    deployment.start_all()
    edge = deployment.plan.edges[1]
    wait_for(lambda: deployment.completed_round() >= 2, TIMEOUT_S, "round 2")
    slow = Fault("delay_uplink", edge, hold_s=2.0, latency_s=22.0)  # beyond the deadline
    injector = FaultInjector(deployment, [slow], tmp_path / FAULTS_LOG)
    record = injector.inject(slow)
    assert record.survived and "straggler" in record.survived_by
    summary, rows = _finish(deployment)
    assert summary["rounds"] == 5
    assert f"['{edge}'] missed the deadline" in _log(deployment, "cloud")
    assert any(r["edges"] == 1 for r in rows) and rows[-1]["edges"] == 2
    assert all(r["edges"] >= 1 for r in rows)


SOAK = [
    "system.edges=4",
    "system.devices=40",
    "rounds=60",
    "training.epochs=5",
    "federation.deadline_s=20",
    "grpc.heartbeat_s=60",
    "grpc.failover_s=2",
    "grpc.reattach_s=10",
    "grpc.dormant_after_s=2",
]
"""1 cloud, 4 edges, 40 devices (one process per edge's devices); deadlines that a slow
WAN misses; devices fail over after 2 s, edges go dormant after 2 s."""
FAULTS = 20
SOAK_TIMEOUT_S = 900.0
"""A hard bound (a quiet 2-core machine needs a few minutes; a loaded one far more)."""


@pytest.mark.soak
def test_soak_a_deployment_survives_twenty_mixed_faults_without_losing_a_round(
    tmp_path: Path, deploy
) -> None:
    cfg = _config(tmp_path, SOAK)
    reference = run_experiment(cfg, out_dir=tmp_path / "fault-free", progress=False)
    started_s = time.monotonic()
    deployment = deploy(cfg, link_latency_s=0.2)
    faults = mixed_faults(list(deployment.commands()), FAULTS, cfg.seed)
    deployment.start_all()
    injecting = deployment.inject(faults)
    try:
        summary, rows = _finish(deployment, SOAK_TIMEOUT_S)
    finally:
        injecting.stop()
    records = injecting.records
    log = deployment.directory / FAULTS_LOG
    print(f"soak: {time.monotonic() - started_s:.0f} s, faults {injecting.injector.summary()}")
    print(f"accuracy {summary['accuracy']:.4f}, fault-free {reference.summary['accuracy']:.4f}")
    assert len(records) == FAULTS, log.read_text()
    assert {f.kind for f in faults} == {r.kind for r in records}
    assert all(r.survived and set(r.survived_by) <= set(SURVIVALS) for r in records), [
        r for r in records if not r.survived
    ]
    assert len(log.read_text().splitlines()) == FAULTS
    assert summary["rounds"] == cfg.rounds
    assert all(r["edges"] >= 1 and r["participants"] > 0 for r in rows)  # no lost round
    assert abs(summary["accuracy"] - reference.summary["accuracy"]) <= 0.01

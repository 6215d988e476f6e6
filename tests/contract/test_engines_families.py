"""Every algorithm family on every engine that runs it: the same final weights.

Two rounds of the tiny digits federation per case on the local engine (the reference), Ray
(``workers = 2``: device training, edge rounds and peer training on the pool) and, for the
families the gRPC engine runs (cloud-only FedAvg family and asynchronous FL, hierarchical
and multi-server FL), a real gRPC deployment on loopback. Deterministic engines must end
bit-identical; see ``test_async_on_grpc_completes`` for the one case that is not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy_helpers import deploy_config, final_model, same_weights
from fedge.experiment.config import load_config
from fedge.runs.run import RunResult, run_experiment
from fedge.runtime.ray import start_local_ray

pytestmark = [pytest.mark.ray, pytest.mark.grpc, pytest.mark.slow]

DP = ["privacy.mechanism='central'", "privacy.noise_multiplier=0.5", "privacy.clip=1.0"]
SECAGG = ["secure_aggregation.enabled=true", "federation.clients_per_round=3"]
PERSONAL = ["data.local_test_fraction=0.2"]
CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "msfl": (["algorithm='msfl'"], ("ray", "grpc")),
    "single_server": (["algorithm='single_server'"], ("ray", "grpc")),
    "fedavg-secagg": (SECAGG, ("ray", "grpc")),
    "fedavg-central-dp": (DP, ("ray", "grpc")),
    "hierarchical-edge-dp": (["algorithm='hierarchical'", *DP], ("ray",)),
    "fedbuff": (["algorithm='fedbuff'"], ("ray",)),
    "clustered_hfl": (["algorithm='clustered_hfl'", *PERSONAL], ("ray",)),
    "dpmn": (["algorithm='dpmn'", *PERSONAL], ("ray",)),
    "splitfed": (["algorithm='splitfed'"], ("ray",)),
}
MODEL_METRICS = ("accuracy", "loss", "precision", "recall", "f1", "train_loss")
"""Row columns computed from the trained models: the figures of families whose models stay
on the edges or devices (``model.pt`` of MS-FL and decentralized runs is the initial one)."""


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (each run finds it up and leaves it so)."""
    ray = pytest.importorskip("ray")
    start_local_ray(ray, num_cpus=2)
    yield ray
    ray.shutdown()


def _run(config: Path, sets: list[str], engine: str, out: Path) -> RunResult:
    cfg = load_config(config, [*sets, f"engine={engine!r}", "ray.workers=2"])
    result = run_experiment(cfg, out_dir=out / engine)
    assert result.summary["rounds"] == 2
    return result


def _rows(result: RunResult, keep: Callable[[str], bool]) -> str:
    """The rows' kept columns as JSON text (NaN equals NaN)."""
    rows = [{k: v for k, v in row.items() if keep(k)} for row in result.rows]
    return json.dumps(rows, sort_keys=True)


def _of_models(key: str) -> bool:
    return key.startswith(MODEL_METRICS)


def _not_wall(key: str) -> bool:
    return not key.startswith("wall_time")


@pytest.mark.parametrize("case", list(CASES))
def test_every_engine_of_a_family_ends_with_the_same_weights(
    ray_session, tmp_path: Path, case: str
) -> None:
    """Same final weights and model figures on every engine; on Ray also the same
    simulated time, bytes, energy and every other column."""
    extra, engines = CASES[case]
    config = deploy_config(tmp_path)
    sets = ["rounds=2", "output.plots=false", *extra]
    local = _run(config, sets, "local", tmp_path)
    reference = final_model(local.run_dir)
    figures = _rows(local, _of_models)
    assert figures.count("accuracy") >= 2 and "NaN" not in figures  # evaluated trained models
    for engine in engines:
        result = _run(config, sets, engine, tmp_path)
        assert same_weights(final_model(result.run_dir), reference), f"{case}: {engine} weights"
        assert _rows(result, _of_models) == figures, f"{case}: {engine} figures"
        if engine == "ray":
            assert _rows(result, _not_wall) == _rows(local, _not_wall)


def test_async_on_grpc_completes(tmp_path: Path) -> None:
    """FedBuff over gRPC: which device's update fills the buffer first depends on when the
    real processes answer (wall clock), so the weights are not defined; what is defined is
    that the run completes its rounds, each applying ``buffer_size`` updates."""
    config = deploy_config(tmp_path)
    sets = ["rounds=2", "output.plots=false", "algorithm='fedbuff'", "engine='grpc'"]
    cfg = load_config(config, sets)
    result = run_experiment(cfg, out_dir=tmp_path / "grpc")
    assert result.summary["rounds"] == 2
    assert [row["round"] for row in result.rows] == [1, 2]
    assert all(row["applied"] == cfg.asynchronous.buffer_size for row in result.rows)

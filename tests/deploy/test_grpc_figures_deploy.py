"""A gRPC deployment's figures against the local engine's for the same config and seed.

The local engine is the oracle: it charges every message's codec bytes on the system
model's route in one process; a deployment counts them in every process and adds the
reports up at the cloud. Message bytes per tier and round must agree exactly, and so
must the cost model's latency for those transfers when links are not shared (a deployment
prices each transfer alone); energy up to the order of float additions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy_helpers import deploy_config
from fedge.deploy.local import deploy_local
from fedge.experiment.config import load_config
from fedge.results import read_rows_csv
from fedge.runs.run import run_experiment

pytestmark = [pytest.mark.grpc, pytest.mark.slow]

TIMEOUT_S = 180.0


def _tier_keys(row: dict[str, object]) -> dict[str, float]:
    return {
        k: float(v)  # type: ignore[arg-type]
        for k, v in row.items()
        if k.startswith(("bytes_up", "bytes_down", "bytes_peer", "bytes_dense"))
    }


@pytest.mark.parametrize("algorithm", ["fedavg", "hierarchical"])
def test_grpc_figures_per_tier_bytes_equal_the_local_engines(tmp_path: Path, algorithm) -> None:
    path = deploy_config(tmp_path)
    path.write_text(path.read_text().replace('"fedavg"', f'"{algorithm}"'))
    cfg = load_config(path, ["rounds=2", "system.links.shared=false"])
    local = run_experiment(cfg, out_dir=tmp_path / "local")
    run_dir, summary = deploy_local(cfg, tmp_path / "grpc", timeout_s=TIMEOUT_S)

    local_rows = read_rows_csv(local.run_dir / "metrics.csv")
    grpc_rows = read_rows_csv(run_dir / "metrics.csv")
    tiers = _tier_keys(local_rows[-1])
    assert tiers["bytes_up_device_edge"] > 0 and tiers["bytes_down_edge_cloud"] > 0
    for mine, theirs in zip(grpc_rows, local_rows, strict=True):
        assert _tier_keys(mine) == _tier_keys(theirs)
    assert _tier_keys(summary) == _tier_keys(local.summary)
    modelled = [k for k in local.summary if k.startswith("latency_")]
    assert modelled and {k: summary[k] for k in modelled} == {k: local.summary[k] for k in modelled}
    assert summary["transmission_latency_s"] == local.summary["transmission_latency_s"] > 0
    for key in ("energy_j", "energy_j_device", "energy_j_edge"):
        assert summary[key] == pytest.approx(local.summary[key], rel=1e-12)

    # the rest of the accounting: wire overhead beside the message bytes, marked figures
    assert summary["wire_overhead_bytes"] > 0
    assert summary["wire_bytes_up_device" if algorithm == "fedavg" else "wire_bytes_up_edge"] > 0
    assert summary["latency_measured_compute_device_s"] > 0
    assert "energy_j" in summary["modelled"] and "latency_upload_s" in summary["modelled"]
    assert "bytes_up_device_edge" in summary["measured"]
    assert json.loads((run_dir / "summary.json").read_text()) == summary

"""Secure aggregation over the gRPC engine: every stage of the protocol is a message between
real processes, and the model equals the local engine's exactly (the ring sum is exact)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy_helpers import deploy_config, final_model, same_weights
from fedge.deploy.local import deploy_local
from fedge.experiment.config import load_config
from fedge.results import read_rows_csv
from fedge.runs.run import run_experiment

pytestmark = [pytest.mark.grpc, pytest.mark.slow]


def test_secure_fedavg_on_grpc_equals_the_local_engine(tmp_path: Path) -> None:
    config = deploy_config(tmp_path)
    cfg = load_config(
        config,
        [
            "rounds=2",
            "secure_aggregation.enabled=true",
            "secure_aggregation.dropout_after_masking=0.25",
        ],
    )
    local = run_experiment(cfg, out_dir=tmp_path / "local")
    run_dir, summary = deploy_local(cfg.model_copy(update={"engine": "grpc"}), tmp_path / "g")
    assert summary["rounds"] == 2
    rows = read_rows_csv(run_dir / "metrics.csv")
    assert [r["secagg_dropped_after_masking"] for r in rows] == [1.0, 1.0]
    keys = ("accuracy", "participants", "train_loss")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in local.rows]
    assert same_weights(final_model(run_dir), final_model(local.run_dir))

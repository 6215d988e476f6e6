"""Central and local DP run on the gRPC engine (real processes on loopback) exactly as on
the local engine: the same noise, clip norms and ε every round."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy_helpers import deploy_config
from fedge.deploy.local import deploy_local
from fedge.experiment.config import load_config
from fedge.results import read_rows_csv
from fedge.runs.run import run_experiment

pytestmark = [pytest.mark.grpc, pytest.mark.slow]

KEYS = ("accuracy", "epsilon", "epsilon_next", "participants")


@pytest.mark.parametrize(
    ("name", "overrides", "extra"),
    [
        ("central", ["privacy.mechanism='central'", "privacy.adaptive_clip=true",
                     "privacy.clipped_count_stddev=2.0"], ("clip_norm", "unclipped_fraction")),
        ("local", ["algorithm='hierarchical'", "privacy.mechanism='local'",
                   "privacy.noise_multiplier=0.5"], ()),
    ],
)  # fmt: skip
def test_dp_runs_on_grpc_as_on_the_local_engine(tmp_path: Path, name, overrides, extra) -> None:
    cfg = load_config(deploy_config(tmp_path), ["rounds=2", "output.plots=false", *overrides])
    local = run_experiment(cfg, out_dir=tmp_path / "local", progress=False)
    run_dir, summary = deploy_local(cfg.model_copy(update={"engine": "grpc"}), tmp_path / "g")
    deployed = read_rows_csv(run_dir / "metrics.csv")
    keys = (*KEYS, *extra)
    assert [[r[k] for k in keys] for r in deployed] == [[r[k] for k in keys] for r in local.rows]
    assert summary["epsilon"] == local.summary["epsilon"] > 0
    assert summary["delta"] == 1e-5

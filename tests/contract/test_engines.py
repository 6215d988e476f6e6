"""One experiment, four engines, the same final weights (DESIGN rule 3).

FedAvg and hierarchical FL run two rounds of the tiny digits federation on: the plain
in-process transport (no cost model), the simulated transport (``engine = "local"``), Ray
(``engine = "ray"``) and a real gRPC deployment of cloud, edge and device processes with
TLS (``engine = "grpc"``). Every engine delivers the same updates; aggregation combines
them in a canonical order, so the weights must be bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch

from deploy_helpers import deploy_config, final_model, in_process_history, same_weights
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.runs.run import run_experiment

pytestmark = [pytest.mark.ray, pytest.mark.grpc]


QSGD_UP = "compression=[{link='device-cloud', method='qsgd', levels=15}]"
TOPK_FP16 = (
    "compression=[{link='device-edge', method='topk', ratio=0.1},"
    " {link='edge-cloud', method='fp16'}]"
)
CASES = {
    "fedavg": ("fedavg", []),
    "hierarchical": ("hierarchical", []),
    "fedavg-qsgd": ("fedavg", [QSGD_UP]),
    "hierarchical-topk-ef-fp16": ("hierarchical", [TOPK_FP16]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_engine_ends_with_the_same_weights(tmp_path: Path, case: str) -> None:
    """Compressed links too: random draws, error-feedback residuals and encodings must be
    the same wherever the nodes run."""
    algorithm, extra = CASES[case]
    config = deploy_config(tmp_path)
    base = [f"algorithm={algorithm!r}", "rounds=2", "output.plots=false", *extra]
    weights = {"in-process": dict(in_process_history(config, base).final_state)}
    for engine in ("local", "ray", "grpc"):
        cfg = load_config(config, [*base, f"engine={engine!r}", "ray.workers=2"])
        result = run_experiment(cfg, out_dir=tmp_path / engine)
        assert result.summary["rounds"] == 2
        weights[engine] = final_model(result.run_dir)
        assert not ray.is_initialized(), "the Ray engine left the Ray session it started"
    reference = weights["local"]
    assert any(not torch.equal(v, reference[k]) for k, v in build(cfg).initial_state.items())
    for engine, state in weights.items():
        assert same_weights(state, reference), f"{engine} differs from the local engine"

"""The local engine's memory does not grow with the population: 100,000 Synthetic clients
with a stateful algorithm (top-k with error feedback) under a state memory budget cost
about what 1,000 do, and the resident device state stays within the budget."""

import json
import subprocess
import sys

import pytest

BUDGET_MB = 0.01  # about four residuals of the logistic model (610 float32 each)
GROWTH_BOUND_MIB = 48  # 100x the population: ids, sizes, positions, the selection hint

SCRIPT = """
import json, resource, sys
from fedge.experiment.build import build
from fedge.experiment.config import ExperimentConfig
devices, budget = int(sys.argv[1]), float(sys.argv[2])
cfg = ExperimentConfig.model_validate({
    "rounds": 4, "threads": 1,
    "data": {"dataset": "leaf_synthetic", "synthetic": {"max_samples": 100, "test_clients": 10}},
    "model": {"name": "logistic"}, "training": {"lr": 0.01, "batch_size": 10, "steps": 2},
    "federation": {"clients_per_round": 20, "evaluate_every": 100},
    "system": {"edges": 10, "devices": devices, "out_of_coverage": "nearest"},
    "compression": [{"link": "device-cloud", "method": "topk", "ratio": 0.1}],
    "population": {"state_memory_mb": budget},
})
exp = build(cfg)
exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 4)
apps, spill = exp.nodes.apps, exp.nodes.apps.spill
print(json.dumps({
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "made": apps.made, "state_bytes": spill.total, "peak_state_bytes": spill.peak,
    "evictions": spill.evictions, "budget_bytes": spill.budget,
}))
"""


def _measure(devices: int) -> dict[str, float]:
    cmd = [sys.executable, "-c", SCRIPT, str(devices), str(BUDGET_MB)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_memory_does_not_grow_with_the_population() -> None:
    small, large = _measure(1_000), _measure(100_000)
    for row in (small, large):
        assert row["evictions"] >= 60  # 80 deliveries; the budget holds about four states
        assert row["state_bytes"] <= row["budget_bytes"] == int(BUDGET_MB * 2**20)
        assert row["made"] <= 5
    assert large["peak_rss_mib"] - small["peak_rss_mib"] < GROWTH_BOUND_MIB

"""The Ray engine under a state memory budget: the driver's device state leaves memory and
comes back, and the numbers are the local engine's without a budget."""

import pytest
import torch
from test_ray import ray_session, run_keeping_history, without_wall_time  # noqa: F401

from fedge.experiment.config import load_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SETS = [
    "rounds=3",
    "threads=1",
    "federation.clients_per_round=6",
    "compression=[{link='device-cloud', method='topk', ratio=0.05, error_feedback=true}]",
]


def test_ray_with_a_tiny_budget_gives_the_local_numbers(ray_session, tiny_config, monkeypatch):  # noqa: F811
    local, local_hist, _ = run_keeping_history(monkeypatch, load_config(tiny_config, SETS))
    sets = [*SETS, "engine='ray'", "ray.workers=2", "population.state_memory_mb=0.000001"]
    remote, remote_hist, nodes = run_keeping_history(monkeypatch, load_config(tiny_config, sets))
    assert nodes.remote_deliveries > 0
    spill = nodes.apps.spill
    assert spill.evictions > 0 and spill.restores > 0
    for key, tensor in local_hist.final_state.items():
        assert torch.equal(tensor, remote_hist.final_state[key]), key
    assert without_wall_time(remote.rows) == without_wall_time(local.rows)

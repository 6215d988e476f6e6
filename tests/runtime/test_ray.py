"""engine = "ray": the same numbers as the local engine, on a bounded pool of actors."""

import sys

import pytest
import torch

import fedge.runs.run as run_module
from fedge.cli import _parser, _run_overrides
from fedge.core.errors import FedgeError
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.runs.run import run_experiment
from fedge.runtime.ray import start_local_ray

pytestmark = pytest.mark.ray

TWO_ROUNDS = ["rounds=2", "threads=1"]


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module; node sets find it running and leave it up."""
    ray = pytest.importorskip("ray")
    start_local_ray(ray, num_cpus=2)
    yield ray
    ray.shutdown()


def run_keeping_history(monkeypatch, config):
    """run_experiment, also returning the coordinator's history and the node set."""
    kept = {}

    def build_and_keep(cfg):
        exp = build(cfg)
        inner = exp.coordinator.run

        def run(*args, **kwargs):
            kept["history"] = inner(*args, **kwargs)
            return kept["history"]

        exp.coordinator.run = run
        kept["nodes"] = exp.nodes
        return exp

    monkeypatch.setattr(run_module, "build", build_and_keep)
    result = run_experiment(config)
    return result, kept["history"], kept["nodes"]


def without_wall_time(rows):
    return [{k: v for k, v in row.items() if not k.startswith("wall_time")} for row in rows]


@pytest.mark.parametrize("algorithm", ["fedavg", "hierarchical"])
def test_ray_engine_gives_the_local_numbers(ray_session, tiny_config, monkeypatch, algorithm):
    sets = [*TWO_ROUNDS, f"algorithm={algorithm!r}"]
    local, local_hist, _ = run_keeping_history(monkeypatch, load_config(tiny_config, sets))
    on_ray = load_config(tiny_config, [*sets, "engine='ray'", "ray.workers=2"])
    remote, remote_hist, nodes = run_keeping_history(monkeypatch, on_ray)
    # the training did run on the pool: devices' own, or inside the edges' rounds
    on_pool = nodes.remote_subtrees if algorithm == "hierarchical" else nodes.remote_deliveries
    assert on_pool > 0
    assert nodes.pool_size == 0  # closed by run_experiment
    assert local_hist.final_state.keys() == remote_hist.final_state.keys()
    for key, tensor in local_hist.final_state.items():
        assert torch.equal(tensor, remote_hist.final_state[key]), key
    assert without_wall_time(remote.rows) == without_wall_time(local.rows)


def test_pool_is_bounded_by_workers_not_devices(ray_session, tiny_config):
    sets = ["engine='ray'", "ray.workers=2", "system.devices=50", "threads=1"]
    exp = build(load_config(tiny_config, [*sets, "federation.clients_per_round=6"]))
    try:
        assert exp.nodes.pool_size == 0  # created lazily
        exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 1)
        assert exp.nodes.pool_size == 2
        assert exp.nodes.remote_deliveries == 6
    finally:
        exp.nodes.close()
    assert exp.nodes.pool_size == 0
    assert ray_session.is_initialized()  # not started by the node set: left running


def test_missing_ray_names_the_extra(tiny_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(FedgeError, match=r"pip install 'fedge\[ray\]'"):
        build(load_config(tiny_config, ["engine='ray'"]))


def test_run_shortcuts_become_overrides():
    args = _parser().parse_args(
        ["run", "x.toml", "--set", "rounds=2", "--engine", "ray", "--ray-address", "ray://h:10001"]
    )
    assert _run_overrides(args) == ["rounds=2", "engine='ray'", "ray.address='ray://h:10001'"]
    plain = _parser().parse_args(["run", "x.toml"])
    assert _run_overrides(plain) == []

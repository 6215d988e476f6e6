"""HierFAVG and single-server FL on the simulated engine (tiny digits federation)."""

import pytest
import torch

from fedge.algorithms.apps import _override
from fedge.core.update import flatten
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.learning import TrainConfig
from fedge.runs.run import run_experiment


def final_state(tiny_config, *sets):
    exp = build(load_config(tiny_config, list(sets)))
    history = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, exp.config.rounds)
    return history, exp.transport.stats()


def test_one_edge_and_kappa2_1_equals_fedavg(tiny_config):
    common = ["system.edges=1", "federation.clients_per_round=10", "rounds=2"]
    hier, _ = final_state(tiny_config, "algorithm='hierarchical'", *common)
    fedavg, _ = final_state(tiny_config, "algorithm='fedavg'", *common)
    assert torch.allclose(flatten(hier.final_state), flatten(fedavg.final_state), atol=1e-6)


def test_kappa2_edge_rounds_happen_between_cloud_rounds(tiny_config):
    one, s1 = final_state(tiny_config, "algorithm='hierarchical'", "rounds=1")
    two, s2 = final_state(
        tiny_config, "algorithm='hierarchical'", "rounds=1", "federation.kappa2=2"
    )
    assert s2["bytes_up_device_edge"] == pytest.approx(2 * s1["bytes_up_device_edge"], rel=0.01)
    # one cloud upload per edge either way; only the metrics' decimal digits in the
    # message headers may differ by a few bytes
    assert s2["bytes_up_edge_cloud"] == pytest.approx(s1["bytes_up_edge_cloud"], abs=64)
    assert not torch.allclose(flatten(one.final_state), flatten(two.final_state))
    assert s2["sim_time_s"] > s1["sim_time_s"]


def test_edges_aggregate_only_their_own_devices(tiny_config):
    _, stats = final_state(tiny_config, "algorithm='hierarchical'", "rounds=1")
    # Each device's model crosses only its own wireless link; the WAN carries one model per edge.
    assert stats["bytes_up_edge_cloud"] < stats["bytes_up_device_edge"] / 3
    assert stats.get("bytes_peer_edge_edge", 0) == 0


def test_single_server_edges_never_exchange_models(tiny_config):
    result = run_experiment(load_config(tiny_config, ["algorithm='single_server'"]))
    last = result.rows[-1]
    assert last.get("bytes_peer_edge_edge", 0) == 0
    model_nbytes = last["bytes_down_edge_cloud"] / 2  # the initial model, once per edge
    assert last["bytes_up_edge_cloud"] < 0.01 * model_nbytes
    assert last["accuracy_min"] <= last["accuracy"] <= last["accuracy_max"]
    assert last["accuracy_min"] < last["accuracy_max"]


def test_local_rounds_multiply_epochs_or_steps():
    assert _override(TrainConfig(epochs=2), {"local_rounds": 3}).epochs == 6
    assert _override(TrainConfig(steps=5), {"local_rounds": 3}).steps == 15
    assert _override(TrainConfig(lr=0.1), {"lr": 0.2}).lr == 0.2


def test_edges_fold_in_handed_over_updates_even_with_validation_splits(tiny_config):
    from fedge.experiment.build import build as build_exp

    sets = [
        "algorithm='hierarchical'",
        "system.mobility='highway'",
        "system.speed_min_mps=30",
        "system.speed_max_mps=40",
        "system.device.gflops_min=0.0005",
        "system.device.gflops_max=0.001",
        "rounds=3",
        "data.validation_size=40",
    ]
    exp = build_exp(load_config(tiny_config, sets))
    exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, exp.config.rounds)
    redirected = exp.transport.stats()["handover_redirected"]
    waiting = sum(len(exp.nodes.apps[e].state.get("inbox", [])) for e in exp.system.ids("edge"))
    assert redirected > 0
    assert waiting < redirected

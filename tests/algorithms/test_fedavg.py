"""FedAvg's defining behaviour, checked on the in-process transport with a tiny model."""

import numpy as np
import pytest
import torch

from fedge.algorithms import FedAvg, LocalTrainer, trainer_app
from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.core.node import NodeApp
from fedge.core.update import flatten
from fedge.learning import (
    TrainConfig,
    build_model,
    load_state,
    local_train,
    make_synthetic,
    state_of,
)
from fedge.runtime import LocalTransport, NodeSet
from fedge.runtime.local import flat_membership

N_DEVICES = 4


def federation(lr=0.1, proximal_mu=0.0, sizes=(20, 30, 40, 50)):
    train, _ = make_synthetic(n_train=sum(sizes), n_test=10, input_shape=(6,), n_classes=3, seed=1)
    model = build_model("mlp", (6,), 3, seed=0)
    cfg = TrainConfig(lr=lr, batch_size=8, proximal_mu=proximal_mu)
    bounds = np.cumsum((0, *sizes))
    datasets = [train.subset(np.arange(bounds[i], bounds[i + 1])) for i in range(N_DEVICES)]
    apps = {
        f"dev{i}": trainer_app(f"dev{i}", LocalTrainer(model, d, cfg, 1.0))
        for i, d in enumerate(datasets)
    }
    transport = LocalTransport(NodeSet(apps, seed=7), flat_membership({"device": list(apps)}))
    return transport, model, datasets, cfg


def test_a_round_is_the_sample_weighted_mean_of_local_models():
    transport, model, datasets, cfg = federation()
    init = state_of(model)
    algo = FedAvg(clients_per_round=N_DEVICES)
    history = algo.run(transport, init, np.random.default_rng(0), rounds=1)
    # Recompute by hand: each device trains from init with the generator its context gives.
    expected = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in init.items()}
    total = sum(len(d) for d in datasets)
    for i, data in enumerate(datasets):
        ctx = NodeApp(f"dev{i}", "device").context(7, Message("cloud", f"dev{i}", "train", 1), None)
        gen = torch.Generator().manual_seed(int(ctx.rng.integers(2**62)))
        load_state(model, init)
        local_train(model, data, cfg, gen)
        for k, v in state_of(model).items():
            expected[k] += v.double() * len(data) / total
    for k, v in history.final_state.items():
        assert torch.allclose(v.double(), expected[k], atol=1e-6), k


def test_identical_local_models_leave_the_global_model_unchanged():
    transport, model, _, _ = federation(lr=1e-12)
    init = state_of(model)
    final = FedAvg(clients_per_round=3).run(transport, init, np.random.default_rng(0), 2)
    assert torch.allclose(flatten(final.final_state), flatten(init), atol=1e-9)


def test_sampling_is_reproducible_and_counts_participants():
    transport, model, _, _ = federation()
    algo = FedAvg(clients_per_round=2)
    init = state_of(model)
    a = algo.run(transport, init, np.random.default_rng(5), 2)
    b = algo.run(transport, init, np.random.default_rng(5), 2)
    assert torch.equal(flatten(a.final_state), flatten(b.final_state))
    assert [m["participants"] for m in a.metrics] == [2.0, 2.0]


def test_fedprox_keeps_local_models_closer_to_the_global_one():
    drift = {}
    for mu in (0.0, 5.0):
        transport, model, _datasets, _cfg = federation(lr=0.2, proximal_mu=mu)
        init = state_of(model)
        replies = FedAvg(clients_per_round=N_DEVICES).round(
            transport, init, np.random.default_rng(0), 1
        )[2]
        drift[mu] = np.mean([float((flatten(u.state) - flatten(init)).norm()) for u in replies])
    assert drift[5.0] < 0.8 * drift[0.0]


def test_server_momentum_changes_the_trajectory():
    transport, model, _, _ = federation()
    init = state_of(model)
    plain = FedAvg(clients_per_round=4).run(transport, init, np.random.default_rng(0), 2)
    momentum = FedAvg(
        clients_per_round=4, server_optimizer="fedavgm", server_params={"momentum": 0.9}
    ).run(transport, init, np.random.default_rng(0), 2)
    assert not torch.allclose(flatten(plain.final_state), flatten(momentum.final_state))


def test_robust_aggregator_is_used():
    transport, model, _, _ = federation()
    init = state_of(model)
    med = FedAvg(clients_per_round=4, aggregator="median").run(
        transport, init, np.random.default_rng(0), 1
    )
    mean = FedAvg(clients_per_round=4).run(transport, init, np.random.default_rng(0), 1)
    assert not torch.allclose(flatten(med.final_state), flatten(mean.final_state))


def test_bad_parameters_are_rejected():
    with pytest.raises(ConfigError, match="clients_per_round"):
        FedAvg(clients_per_round=0)
    with pytest.raises(ConfigError, match="server"):
        FedAvg(server_optimizer="sgdx")

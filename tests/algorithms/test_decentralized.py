"""Decentralized personalized FL: DFL, DPMN and the baselines on the simulated engine."""

import numpy as np
import pytest
import torch

from fedge.aggregation import weighted_mean
from fedge.aggregation.neighbours import cosine_similarity
from fedge.core import ConfigError
from fedge.core.codec import encoded
from fedge.core.message import Message
from fedge.core.node import derive_seed
from fedge.core.sparse import encode_sparse, sparse_nbytes
from fedge.core.update import Update, flatten
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.learning import local_train, state_of
from fedge.learning.pruning import adaptive_sparsity, prunable_keys
from fedge.runs.run import run_experiment

PEER = ["system.devices=8", "system.peers.k=3", "training.steps=4"]


def run_peers(tiny_config, algorithm, rounds=1, extra=()):
    cfg = load_config(tiny_config, [f"algorithm='{algorithm}'", f"rounds={rounds}", *PEER, *extra])
    exp = build(cfg)
    exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, rounds)
    devices = exp.system.ids("device")
    return exp, devices, {d: exp.nodes.apps[d].state for d in devices}


def test_masks_hold_the_target_sparsity_and_pruned_weights_are_zero(tiny_config):
    _, devices, states = run_peers(
        tiny_config, "dpmn", rounds=3, extra=["decentralized.sparsity=0.6"]
    )
    for d in devices:
        mask, model = states[d]["mask"], states[d]["model"]
        assert sorted(mask) == sorted(prunable_keys(model))
        for key, m in mask.items():
            assert abs(int((~m).sum()) - 0.6 * m.numel()) <= 1
            assert bool((model[key][~m] == 0).all())


def test_the_sparsity_follows_the_cubic_schedule(tiny_config):
    cfg = load_config(
        tiny_config, ["algorithm='dpmp'", "rounds=4", "decentralized.sparsity=0.6", *PEER]
    )
    exp = build(cfg)
    history = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 4)
    densities = [row["density"] for row in history.metrics]
    expected = [1 - adaptive_sparsity(r, 4, 0.6) for r in range(4)]
    assert densities == pytest.approx(expected, abs=0.01)
    assert densities[0] == 1.0 and densities[-1] == pytest.approx(0.4, abs=0.01)


def test_bytes_charged_equal_the_encoded_masked_models(tiny_config):
    exp, devices, states = run_peers(tiny_config, "dpmp", extra=["system.d2d.mode='direct'"])
    expected = 0
    model_bytes = 0
    for d in devices:
        for p in exp.system.peers(d, 0.0):
            ask = Message(d, p, "get_model", 1)
            sparse = encode_sparse(states[p]["model"], states[p]["mask"])
            model = encoded(Update({}, origin=p, round=1), "mask", sparse)
            degree = len(exp.system.peers(p, 0.0))
            reply = ask.reply("model", {"model": model, "degree": degree})
            expected += ask.nbytes() + reply.nbytes()
            model_bytes += sparse_nbytes(states[p]["model"], states[p]["mask"])
    stats = exp.transport.stats()
    assert stats["bytes_peer_device_device"] == expected
    dense = sum(v.numel() * v.element_size() for v in states[devices[0]]["model"].values())
    n_transfers = sum(len(exp.system.peers(d, 0.0)) for d in devices)
    assert model_bytes < 0.6 * dense * n_transfers  # half the weights pruned, plus mask bits
    assert stats["bytes_up"] == 0  # nothing goes through an edge or the cloud
    assert stats["latency_d2d_s"] > 0 and stats["latency_upload_s"] == 0


def test_dpmn_neighbours_all_pass_the_threshold(tiny_config):
    exp, devices, states = run_peers(tiny_config, "dpmn", extra=["decentralized.delta=0.3"])
    chose_some = False
    for d in devices:
        own = flatten(states[d]["update"])
        chosen = states[d]["selected"]
        for p in exp.system.peers(d, 0.0):
            sim = cosine_similarity(own, flatten(states[p]["update"]))
            assert (sim >= 0.3) == (p in chosen), (d, p, sim)
        chose_some |= bool(chosen)
        assert sorted(states[d]["neighbours"]) == sorted(chosen)
    assert chose_some


def test_dpmn_r_choice_does_not_depend_on_delta(tiny_config):
    picks = []
    for delta in (0.0, 0.9):
        _, devices, states = run_peers(
            tiny_config,
            "dpmn_r",
            extra=[f"decentralized.delta={delta}", "decentralized.neighbours=2"],
        )
        picks.append({d: states[d]["selected"] for d in devices})
    assert picks[0] == picks[1]
    assert all(len(s) == 2 for s in picks[0].values())


def test_dpcg_keeps_the_k_nearest_models(tiny_config):
    exp, devices, states = run_peers(tiny_config, "dpcg", extra=["decentralized.neighbours=2"])
    for d in devices:
        own = flatten(states[d]["model"])
        dist = {
            p: float(torch.linalg.vector_norm(flatten(states[p]["model"]) - own))
            for p in exp.system.peers(d, 0.0)
        }
        nearest = sorted(dist, key=lambda p: (dist[p], p))[:2]
        assert states[d]["selected"] == nearest


def test_dfl_with_equal_weights_on_a_complete_graph_is_plain_averaging(tiny_config):
    _, devices, states = run_peers(tiny_config, "dfl", extra=["system.peers.graph='complete'"])
    trained = [states[d]["published"].state for d in devices]
    expected = weighted_mean(trained, [1.0] * len(trained))
    for d in devices:
        assert states[d]["mask"] == {}
        for k, v in expected.items():
            torch.testing.assert_close(states[d]["model"][k], v, rtol=0, atol=1e-6)


def test_dpmn_with_lambda_zero_and_no_neighbours_is_local_training(tiny_config):
    rounds = 2
    extra = [
        "decentralized.lambda=0",
        "decentralized.sparsity=0",
        "system.peers.graph='configured'",
    ]
    exp, devices, states = run_peers(tiny_config, "dpmn", rounds=rounds, extra=extra)
    model = exp.model
    for d in devices:
        learner = exp.nodes.apps[d].handlers["peer_train"].__self__
        model.load_state_dict(exp.initial_state)
        for r in range(1, rounds + 1):
            rng = np.random.default_rng(derive_seed(exp.nodes.seed, d, r, "peer_train"))
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            local_train(model, learner.data, learner.config, gen)
        for k, v in state_of(model).items():
            torch.testing.assert_close(states[d]["model"][k], v, rtol=0, atol=0)
        assert states[d]["selected"] == []


def test_a_run_reports_personal_and_global_accuracy(tiny_config):
    cfg = load_config(tiny_config, ["algorithm='dpmn'", "rounds=2", *PEER])
    result = run_experiment(cfg)
    row = result.rows[-1]
    for key in ("accuracy", "accuracy_min", "accuracy_max", "global_accuracy", "neighbours"):
        assert key in row and np.isfinite(row[key])
    assert row["accuracy_min"] <= row["accuracy"] <= row["accuracy_max"]
    for key in ("accuracy", "accuracy_min", "global_accuracy"):
        assert result.summary[key] == row[key]


def test_relayed_device_traffic_goes_up_to_an_edge_and_down_again(tiny_config):
    cfg = load_config(tiny_config, ["algorithm='dpmp'", "rounds=1", *PEER])
    assert cfg.system.d2d.mode == "relay"
    exp, _, _ = run_peers(tiny_config, "dpmp")
    stats = exp.transport.stats()
    assert stats["bytes_up_device_edge"] == stats["bytes_down_device_edge"] > 0
    assert stats.get("bytes_up_edge_cloud", 0) == 0
    assert stats.get("bytes_peer_device_device", 0) == 0


def test_each_device_keeps_a_disjoint_own_test_split(tiny_config):
    exp = build(load_config(tiny_config, ["algorithm='dpmp'", *PEER]))
    for d in exp.system.ids("device"):
        learner = exp.nodes.apps[d].handlers["peer_train"].__self__
        n = len(learner.data) + len(learner.test)
        assert len(learner.test) == round(0.2 * n)


def test_local_test_split_is_refused_for_non_personalized_algorithms(tiny_config):
    with pytest.raises(ConfigError, match=r"data\.local_test_fraction"):
        build(load_config(tiny_config, ["data.local_test_fraction=0.2"]))

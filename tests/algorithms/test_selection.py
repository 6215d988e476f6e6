"""Client selection: random is the old draw, deadline-aware and power-of-choice do what they say."""

import numpy as np
import pytest
import torch

from fedge.algorithms import SELECTORS, FedAvg, LocalTrainer, SelectionHint, trainer_app
from fedge.algorithms.selection import (
    DeadlineAware,
    PowerOfChoice,
    SelectionContext,
    samples_per_update,
)
from fedge.core.errors import ConfigError, FedgeError
from fedge.core.message import Message
from fedge.core.update import Update, flatten
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.learning import TrainConfig, evaluate, load_state, make_synthetic
from fedge.runtime import LocalTransport, NodeSet
from fedge.runtime.local import flat_membership

SLOW_DEVICES = ["system.device.gflops_min=0.0005", "system.device.gflops_max=0.05"]


def experiment(tiny_config, *sets):
    return build(load_config(tiny_config, list(sets)))


def trainers(exp) -> dict[str, LocalTrainer]:
    return {d: exp.nodes.apps[d].handlers["train"].__self__ for d in exp.system.ids("device")}


def hint_of(exp) -> SelectionHint:
    ts = trainers(exp)
    first = next(iter(ts.values()))
    examples = {d: len(t.data) for d, t in ts.items()}
    return SelectionHint(examples, first.config, first.flops_per_sample)


class OldFedAvg(FedAvg):
    """FedAvg with the sampling it had before selectors existed."""

    def select(self, transport, rng, r, payload):
        devices = transport.nodes("device")
        k = min(self.clients_per_round, len(devices))
        return [devices[i] for i in rng.choice(len(devices), size=k, replace=False)]


def test_default_selection_is_the_old_uniform_draw(tiny_config):
    exp = experiment(tiny_config)
    runs = []
    for algo in (OldFedAvg(clients_per_round=3), FedAvg(clients_per_round=3)):
        rng = np.random.default_rng(11)
        transport = exp.transport.at("cloud", 0.0)
        history = algo.run(transport, exp.initial_state, rng, rounds=3)
        runs.append((history, rng.bit_generator.state, transport.stats()))
    (old, old_rng, old_stats), (new, new_rng, new_stats) = runs
    assert torch.equal(flatten(old.final_state), flatten(new.final_state))
    assert old_rng == new_rng
    assert old.metrics == new.metrics
    assert old_stats["sim_time_s"] == new_stats["sim_time_s"]


def modelled_trips(exp, state, r) -> dict[str, float]:
    """Round trip of every device from the system model's pieces: request down, the FLOPs of
    one epoch over the device's data, the same number of bytes back."""
    system, out = exp.system, {}
    payload = {"model": Update(state, origin="cloud", round=r)}
    for d, t in trainers(exp).items():
        nbytes = Message("cloud", d, "train", r, payload).nbytes()
        down_s = system.transfer("cloud", d, nbytes, 0.0).time_s
        compute_s = system.compute(d, len(t.data) * t.flops_per_sample, r).time_s
        up_s = system.transfer(d, "cloud", nbytes, down_s + compute_s).time_s
        out[d] = down_s + compute_s + up_s
    return out


def test_deadline_aware_leaves_out_exactly_the_devices_that_would_be_late(tiny_config):
    exp = experiment(tiny_config, *SLOW_DEVICES)
    trips = modelled_trips(exp, exp.initial_state, 1)
    deadline_s = float(np.median(list(trips.values())))
    fits = {d for d, t in trips.items() if t <= deadline_s}
    assert 0 < len(fits) < len(trips)
    hint = hint_of(exp)
    payload = {"model": Update(exp.initial_state, origin="cloud", round=1)}
    for d, trip_s in trips.items():
        nbytes = Message("cloud", d, "train", 1, payload).nbytes()
        estimate = exp.transport.estimate_round_trip_s(
            d, nbytes, hint.update_flops(d, {}), nbytes, 1
        )
        assert estimate == pytest.approx(trip_s, rel=1e-12)
    algo = FedAvg(
        clients_per_round=10,
        deadline_s=deadline_s,
        selection="deadline_aware",
        selection_hint=hint,
    )
    before = dict(exp.transport.stats())
    chosen = algo.select(exp.transport, np.random.default_rng(0), 1, payload)
    assert set(chosen) == fits
    assert dict(exp.transport.stats()) == before  # estimating charges nothing
    _, metrics, _ = algo.round(exp.transport, exp.initial_state, np.random.default_rng(0), 1)
    assert metrics["selected"] == metrics["participants"] == len(fits)
    assert exp.transport.stats()["late"] == 0


def test_deadline_aware_samples_k_of_the_devices_in_time(tiny_config):
    exp = experiment(tiny_config, *SLOW_DEVICES)
    trips = modelled_trips(exp, exp.initial_state, 1)
    deadline_s = float(np.median(list(trips.values())))
    algo = FedAvg(
        clients_per_round=2,
        deadline_s=deadline_s,
        selection="deadline_aware",
        selection_hint=hint_of(exp),
    )
    payload = {"model": Update(exp.initial_state, origin="cloud", round=1)}
    for seed in range(5):
        chosen = algo.select(exp.transport, np.random.default_rng(seed), 1, payload)
        assert len(chosen) == 2
        assert all(trips[d] <= deadline_s for d in chosen)


def test_deadline_aware_needs_a_deadline_a_hint_and_a_model_of_time(tiny_config):
    with pytest.raises(ConfigError, match=r"federation\.selection"):
        FedAvg(selection="deadline_aware")
    exp = experiment(tiny_config)
    payload = {"model": Update(exp.initial_state, origin="cloud", round=1)}
    no_hint = FedAvg(clients_per_round=2, deadline_s=10.0, selection="deadline_aware")
    with pytest.raises(FedgeError, match="SelectionHint"):
        no_hint.select(exp.transport, np.random.default_rng(0), 1, payload)

    class Wallclock:
        node_id = "cloud"

        def estimate_round_trip_s(self, *args):
            return None

    ctx = SelectionContext(Wallclock(), 1, payload, 10.0, hint_of(exp))
    with pytest.raises(FedgeError, match="simulated engine"):
        DeadlineAware().select(["dev0"], 1, np.random.default_rng(0), ctx)


def test_grpc_and_local_transports_answer_the_estimate():
    pytest.importorskip("grpc")
    from fedge.runtime.grpc.transport import GrpcTransport

    assert GrpcTransport(object(), "cloud").estimate_round_trip_s("d", 1, 1.0, 1, 1) is None
    local = LocalTransport(NodeSet({}, 0), flat_membership({}))
    assert local.estimate_round_trip_s("d", 1, 1.0, 1, 1) == 0.0


def test_update_flops_follow_the_training_overrides():
    cfg = TrainConfig(batch_size=8)
    hint = SelectionHint({"a": 20}, cfg, 10.0)
    assert hint.update_flops("a", {}) == 20 * 10.0
    assert hint.update_flops("a", {"local_rounds": 3}) == 60 * 10.0
    # 3 batches per epoch (8, 8, 4): 5 steps are one epoch (20) plus two full batches
    assert samples_per_update(20, TrainConfig(batch_size=8, steps=5)) == 36
    with pytest.raises(FedgeError, match="dev9"):
        hint.update_flops("dev9", {})


def losses_by_hand(exp, state) -> dict[str, float]:
    out = {}
    for d, t in trainers(exp).items():
        load_state(t.model, state)
        out[d] = evaluate(t.model, t.data).loss
    return out


def test_power_of_choice_trains_the_highest_loss_candidates(tiny_config):
    exp = experiment(tiny_config)
    devices = exp.system.ids("device")
    state = exp.initial_state
    algo = FedAvg(clients_per_round=3, selection="power_of_choice", selection_params={"d": 6})
    payload = {"model": Update(state, origin="cloud", round=1)}
    chosen = algo.select(exp.transport, np.random.default_rng(4), 1, payload)
    draw = np.random.default_rng(4).choice(len(devices), size=6, replace=False)
    candidates = [devices[i] for i in draw]
    losses = losses_by_hand(exp, state)
    expected = sorted(candidates, key=lambda d: (-losses[d], d))[:3]
    assert chosen == expected
    assert min(losses[d] for d in chosen) >= max(losses[d] for d in candidates if d not in chosen)


def test_power_of_choice_loss_queries_are_charged(tiny_config):
    exp = experiment(tiny_config)
    devices = exp.system.ids("device")
    state = exp.initial_state
    algo = FedAvg(clients_per_round=2, selection="power_of_choice", selection_params={"d": 4})
    payload = {"model": Update(state, origin="cloud", round=1)}
    before = dict(exp.transport.stats())
    algo.select(exp.transport, np.random.default_rng(1), 1, payload)
    after = exp.transport.stats()
    draw = np.random.default_rng(1).choice(len(devices), size=4, replace=False)
    candidates = [devices[i] for i in draw]
    asks = [Message("cloud", c, "loss", 1, payload) for c in candidates]
    # every request crosses the WAN and the candidate's wireless link
    down = after["bytes_down"] - before.get("bytes_down", 0.0)
    assert down == 2 * sum(m.nbytes() for m in asks)
    assert after["bytes_up"] > before.get("bytes_up", 0.0)
    assert after["messages"] - before.get("messages", 0.0) == 2 * len(candidates)
    fps = trainers(exp)[devices[0]].flops_per_sample
    n = sum(len(trainers(exp)[c].data) for c in candidates)
    assert after["flops"] - before.get("flops", 0.0) == pytest.approx(n * fps / 3)
    assert after["sim_time_s"] > before.get("sim_time_s", 0.0)


def test_power_of_choice_runs_rounds_and_samples_by_data_size(tiny_config):
    exp = experiment(tiny_config)
    hint = hint_of(exp)
    algo = FedAvg(
        clients_per_round=2,
        selection="power_of_choice",
        selection_params={"sampling": "data_size"},
        selection_hint=hint,
    )
    history = algo.run(exp.transport, exp.initial_state, np.random.default_rng(0), rounds=2)
    assert [m["selected"] for m in history.metrics] == [2.0, 2.0]
    devices = exp.system.ids("device")
    empty = {devices[0]: 0, devices[1]: 0}
    skewed = SelectionHint({**hint.examples, **empty}, hint.train, hint.flops_per_sample)
    ctx = SelectionContext(exp.transport, 1, {}, None, skewed)
    pick = PowerOfChoice(sampling="data_size")
    for seed in range(10):
        drawn = pick.candidates(devices, 4, np.random.default_rng(seed), ctx)
        assert len(set(drawn)) == 4
        assert not set(drawn) & set(empty)


def test_the_loss_handler_reports_its_evaluation_work():
    train = TrainConfig(batch_size=8)
    model = torch.nn.Linear(3, 2)
    data, _ = make_synthetic(n_train=12, n_test=2, input_shape=(3,), n_classes=2, seed=0)
    app = trainer_app("dev0", LocalTrainer(model, data, train, 6.0))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    msg = Message("cloud", "dev0", "loss", 1, {"model": Update(state)})
    ctx = app.context(0, msg, None)
    reply = app.handle(msg, ctx)
    assert reply.kind == "loss"
    assert reply.payload["loss"] == pytest.approx(evaluate(model, data).loss)
    assert ctx.work.flops == pytest.approx(12 * 6.0 / 3)
    assert "loss" in app.portable


def test_bad_selection_settings_name_the_field():
    with pytest.raises(ConfigError, match=r"federation\.selection"):
        FedAvg(selection="best")
    with pytest.raises(ConfigError, match=r"federation\.selection_params\.d"):
        FedAvg(clients_per_round=4, selection="power_of_choice", selection_params={"d": 3})
    with pytest.raises(ConfigError, match=r"federation\.selection_params\.d"):
        FedAvg(selection="power_of_choice", selection_params={"d": 0})
    with pytest.raises(ConfigError, match=r"federation\.selection_params\.d"):
        FedAvg(selection="power_of_choice", selection_params={"d": 2.5})
    with pytest.raises(ConfigError, match=r"federation\.selection_params\.sampling"):
        FedAvg(selection="power_of_choice", selection_params={"sampling": "loss"})
    with pytest.raises(ConfigError, match=r"federation\.selection_params\.m"):
        FedAvg(selection="power_of_choice", selection_params={"m": 3})
    with pytest.raises(ConfigError, match=r"federation\.selection_params\.d"):
        FedAvg(selection="random", selection_params={"d": 3})


def test_selectors_describe_themselves():
    described = dict(SELECTORS.describe())
    assert set(described) == {"random", "poisson", "deadline_aware", "power_of_choice"}
    assert all(described.values())

"""FedAsync and FedBuff: their defining rules, staleness read off the simulated clock,
determinism, resume, handover in the hierarchy and bad configs."""

import heapq
import json
import math

import numpy as np
import pytest
import torch

from fedge.algorithms import FedAvg, LocalTrainer, trainer_app
from fedge.algorithms.asynchronous import (
    AsyncFL,
    AsyncServer,
    Rule,
    check_staleness,
    staleness_weight,
)
from fedge.algorithms.selection import make_selector
from fedge.cli import main
from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.core.node import NodeApp
from fedge.core.update import Update, flatten
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.learning import (
    TrainConfig,
    build_model,
    load_state,
    local_train,
    make_synthetic,
    state_of,
)
from fedge.runs import resume_experiment, run_experiment
from fedge.runs.checkpoint import CHECKPOINT_NAME, read_checkpoint_header
from fedge.runtime import LocalTransport, NodeSet, SimulatedTransport
from fedge.runtime.local import flat_membership
from fedge.system.availability import Availability
from fedge.system.compute import ComputeProfile
from fedge.system.generators import build_topology
from fedge.system.model import SystemModel
from fedge.system.network import LinkProfile, PathLoss, WirelessProfile, path_gain, shannon_rate_bps
from fedge.system.topology import Profiles


def devices(sizes, lr=0.1, flops_per_sample=1.0):
    train, _ = make_synthetic(n_train=sum(sizes), n_test=10, input_shape=(6,), n_classes=3, seed=1)
    model = build_model("mlp", (6,), 3, seed=0)
    cfg = TrainConfig(lr=lr, batch_size=8)
    bounds = np.cumsum((0, *sizes))
    data = [train.subset(np.arange(bounds[i], bounds[i + 1])) for i in range(len(sizes))]
    apps = {
        f"dev{i}": trainer_app(f"dev{i}", LocalTrainer(model, d, cfg, flops_per_sample))
        for i, d in enumerate(data)
    }
    return apps, model, data, cfg


def local_transport(apps):
    return LocalTransport(NodeSet(apps, seed=7), flat_membership({"device": list(apps)}))


def server(mode, concurrency, k=1, alpha=1.0, staleness="constant", params=None):
    rule = Rule(mode, k, alpha, staleness, check_staleness(staleness, params or {}))
    return AsyncServer(rule, concurrency, make_selector("random", {}, concurrency, None))


def trained(model, data, cfg, start, node, round_index):
    """What device ``node`` sends back for its request of ``round_index`` (by hand)."""
    ctx = NodeApp(node, "device").context(7, Message("cloud", node, "train", round_index), None)
    gen = torch.Generator().manual_seed(int(ctx.rng.integers(2**62)))
    load_state(model, start)
    local_train(model, data, cfg, gen)
    return state_of(model)


# -- the rules ----------------------------------------------------------------------------


def test_staleness_functions_match_xie_et_al():
    assert staleness_weight("constant", {}, 7) == 1.0
    assert staleness_weight("polynomial", {"a": 0.5}, 3) == pytest.approx(0.5)  # (3+1)^-0.5
    assert staleness_weight("polynomial", {"a": 1.0}, 0) == 1.0
    hinge = {"a": 10.0, "b": 4.0}
    assert staleness_weight("hinge", hinge, 4) == 1.0
    assert staleness_weight("hinge", hinge, 6) == pytest.approx(1 / 21)  # 1/(10·2 + 1)
    assert check_staleness("hinge", {"b": 2}) == {"a": 10.0, "b": 2.0}


def test_fedbuff_with_k_equal_to_cohort_and_concurrency_is_a_fedavg_round():
    sizes = (20, 30, 40, 50)
    apps, model, _, _ = devices(sizes)
    init = state_of(model)
    sync = FedAvg(clients_per_round=4).run(local_transport(apps), init, np.random.default_rng(0), 1)
    coordinator = AsyncFL(server("fedbuff", concurrency=4, k=4), updates_per_round=1)
    history = coordinator.run(local_transport(apps), init, np.random.default_rng(0), 1)
    assert history.metrics[0]["staleness_max"] == 0.0
    for key, value in sync.final_state.items():
        assert torch.allclose(history.final_state[key], value, atol=1e-6), key
    assert not torch.allclose(flatten(history.final_state), flatten(init))


def test_fedasync_with_alpha_1_and_no_staleness_replaces_the_model():
    apps, model, data, cfg = devices((30,))
    init = state_of(model)
    coordinator = AsyncFL(server("fedasync", concurrency=1, alpha=1.0), updates_per_round=1)
    history = coordinator.run(local_transport(apps), init, np.random.default_rng(0), 2)
    first = trained(model, data[0], cfg, init, "dev0", 1)
    second = trained(model, data[0], cfg, first, "dev0", 2)
    for key, value in second.items():
        assert torch.equal(history.final_state[key], value), key
    assert [m["staleness_max"] for m in history.metrics] == [0.0, 0.0]


def test_fedasync_mixes_with_alpha_times_the_staleness_weight():
    apps, model, data, cfg = devices((30,))
    init = state_of(model)
    coordinator = AsyncFL(server("fedasync", 1, alpha=0.4, staleness="polynomial"), 1)
    history = coordinator.run(local_transport(apps), init, np.random.default_rng(0), 1)
    new = trained(model, data[0], cfg, init, "dev0", 1)
    for key, value in init.items():  # staleness 0: s = 1, so the weight is alpha
        expected = 0.6 * value.double() + 0.4 * new[key].double()
        assert torch.allclose(history.final_state[key].double(), expected, atol=1e-6), key


# -- staleness from the clock -------------------------------------------------------------

WAN = LinkProfile(bandwidth_bps=8e6, latency_s=0.05)
WIRELESS = WirelessProfile(bandwidth_hz=1e6, device_tx_power_w=0.5, edge_tx_power_w=1.0)
DEVICE = ComputeProfile(
    flops_per_s=1e9, memory_bytes=1e9, static_power_w=2.0, energy_per_flop_j=1e-9
)


def three_devices():
    """A cloud, one edge at x=0 and three 1 GFLOP/s devices 100, 200 and 300 m away."""
    profiles = Profiles(device=DEVICE, device_flops_range=(1e9, 1e9), wan=WAN, wireless=WIRELESS)
    spots = [(100.0, 0.0), (200.0, 0.0), (300.0, 0.0)]
    topo = build_topology([(0.0, 0.0, 1000.0)], spots, np.random.default_rng(0), profiles)
    return SystemModel(topo, availability=Availability())


def round_trip_s(distance_m, down_bytes, up_bytes, compute_s):
    """WAN + wireless down, compute, wireless + WAN up (the simulated transport's model)."""

    def rate(power_w):
        gain = path_gain(distance_m, PathLoss())
        return shannon_rate_bps(1e6, power_w, gain, WIRELESS.noise_psd_w_per_hz)

    down = 0.05 + 8 * down_bytes / 8e6 + 8 * down_bytes / rate(1.0)
    up = 8 * up_bytes / rate(0.5) + 0.05 + 8 * up_bytes / 8e6
    return down + compute_s + up


def test_a_stragglers_update_arrives_with_the_staleness_the_clock_implies():
    # 1 GFLOP/s devices; one epoch of n samples at 1e8 FLOPs each takes n/10 seconds:
    # 1 s, 2 s and 10 s (the straggler).
    sizes = (10, 20, 100)
    apps, model, _, _ = devices(sizes, flops_per_sample=1e8)
    init = state_of(model)
    transport = SimulatedTransport(NodeSet(apps, seed=7), three_devices())
    coordinator = AsyncFL(server("fedasync", concurrency=3, alpha=0.5), updates_per_round=1)
    history = coordinator.run(transport, init, np.random.default_rng(0), 16)

    # The same arithmetic, independently: every device starts at once from version 0 and
    # starts again from the newest version as soon as its update is applied.
    request = Message("cloud", "dev0", "train", 1, {"model": Update(init), "version": 0})
    reply = Message("dev0", "cloud", "update", 1, {"update": Update(init, 10.0)})
    rt = [
        round_trip_s(100.0 * (i + 1), request.nbytes(), reply.nbytes(), n / 10)
        for i, n in enumerate(sizes)
    ]
    events = [(rt[i], i, 0) for i in range(3)]
    version, expected = 0, []
    while len(expected) < 16:
        t, i, started = heapq.heappop(events)
        expected.append((t, f"dev{i}", version - started))
        version += 1
        heapq.heappush(events, (t + rt[i], i, version))
    got = [(m["staleness_max"]) for m in history.metrics]
    assert got == [float(tau) for _, _, tau in expected]
    straggler = [tau for _, node, tau in expected if node == "dev2"]
    # round trips 1.60 s, 2.64 s and 10.68 s (the 170 kB model crosses the WAN and the
    # radio both ways): 6 updates of dev0 and 4 of dev1 land before the straggler's
    assert [round(x, 2) for x in rt] == [1.60, 2.64, 10.68]
    assert straggler == [10]
    assert transport.now() == pytest.approx(expected[-1][0], rel=1e-4)


# -- runs ---------------------------------------------------------------------------------

ASYNC = [
    "algorithm='fedbuff'",
    "asynchronous.concurrency=4",
    "asynchronous.buffer_size=3",
    "system.dropout_prob=0.1",
    "system.straggler_prob=0.2",
    "system.straggler_slowdown=5",
    "system.device.gflops_min=0.01",
    "system.device.gflops_max=1",
    "rounds=4",
    "output.plots=false",
]


def strip_wall(rows):
    return [
        json.dumps({k: v for k, v in r.items() if "wall" not in k}, sort_keys=True) for r in rows
    ]


@pytest.mark.slow
def test_async_runs_are_deterministic_and_report_version_staleness_and_time(tiny_config, tmp_path):
    a = run_experiment(load_config(tiny_config, ASYNC), out_dir=tmp_path / "a")
    b = run_experiment(load_config(tiny_config, ASYNC), out_dir=tmp_path / "b")
    assert strip_wall(a.rows) == strip_wall(b.rows)
    assert [r["version"] for r in a.rows] == [1.0, 2.0, 3.0, 4.0]
    assert all(r["applied"] == 3.0 for r in a.rows)
    assert all(r["staleness_mean"] <= r["staleness_max"] for r in a.rows)
    times = [r["sim_time_s"] for r in a.rows]
    assert times == sorted(times) and times[0] > 0
    # every request whose device dropped out came back absent and freed its slot
    assert sum(r["absent"] for r in a.rows) == a.rows[-1]["dropped"] > 0


def test_time_budget_stops_the_run(tiny_config, tmp_path):
    full = run_experiment(load_config(tiny_config, ASYNC), out_dir=tmp_path / "a")
    budget = full.rows[1]["sim_time_s"]
    cut = run_experiment(
        load_config(tiny_config, [*ASYNC, f"asynchronous.time_budget_s={budget}"]),
        out_dir=tmp_path / "b",
    )
    assert len(cut.rows) == 2


@pytest.mark.slow
def test_an_interrupted_async_run_resumes_identically(tiny_config, tmp_path, monkeypatch):
    sets = [*ASYNC, "algorithm='fedasync'", "asynchronous.updates_per_round=3"]
    full = run_experiment(load_config(tiny_config, sets), out_dir=tmp_path / "full")
    original = NodeSet.deliver
    seen = [0]

    def deliver(self, message, downstream):
        seen[0] += 1
        if seen[0] == 12:
            raise KeyboardInterrupt
        return original(self, message, downstream)

    with monkeypatch.context() as patch:
        patch.setattr(NodeSet, "deliver", deliver)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(load_config(tiny_config, sets), out_dir=tmp_path / "cut")
    [run_dir] = [p for p in (tmp_path / "cut").iterdir() if p.is_dir()]
    assert 1 <= read_checkpoint_header(run_dir / CHECKPOINT_NAME)["round"] < 4
    resumed = resume_experiment(run_dir)
    assert strip_wall(resumed.rows) == strip_wall(full.rows)


def test_hierarchy_handover_delivers_to_the_new_edge(tiny_config):
    sets = [
        "algorithm='fedasync_hier'",
        "system.mobility='highway'",
        "system.speed_min_mps=30",
        "system.speed_max_mps=40",
        "system.device.gflops_min=0.0005",
        "system.device.gflops_max=0.001",
        "asynchronous.concurrency=3",
        "asynchronous.updates_per_round=2",
        "rounds=3",
    ]
    exp = build(load_config(tiny_config, sets))
    history = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, exp.config.rounds)
    stats = exp.transport.stats()
    assert stats["handover_redirected"] > 0
    edges = [exp.nodes.apps[e].state for e in exp.system.ids("edge")]
    applied = sum(s.get("handovers_applied", 0) for s in edges)
    waiting = sum(len(s.get("inbox", [])) for s in edges)
    assert applied > 0
    assert applied + waiting == stats["handover_redirected"]
    assert all(m["edge_staleness_max"] >= 0 for m in history.metrics)


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("asynchronous.buffer_size=20", "asynchronous.buffer_size"),
        ("asynchronous.staleness='cubic'", "asynchronous.staleness"),
        ("asynchronous.staleness_params={b=1}", "asynchronous.staleness_params.b"),
        ("asynchronous.speed=1", "asynchronous.speed"),
        ("federation.deadline_s=5", "federation.deadline_s"),
    ],
)
def test_bad_async_configs_exit_2_naming_the_field(capsys, tiny_config, override, field):
    code = main(["run", str(tiny_config), "--set", "algorithm='fedbuff'", "--set", override])
    err = capsys.readouterr().err
    assert code == 2
    assert field in err and "Traceback" not in err


def test_a_hierarchical_cloud_buffer_larger_than_the_edges_is_refused(tiny_config):
    sets = ["algorithm='fedbuff_hier'", "asynchronous.cloud_buffer_size=3"]
    with pytest.raises(ConfigError, match=r"asynchronous\.cloud_buffer_size"):
        build(load_config(tiny_config, sets))


def test_staleness_function_validation_names_the_parameter():
    with pytest.raises(ConfigError, match=r"staleness_params\.a"):
        check_staleness("polynomial", {"a": -1})
    assert math.isclose(staleness_weight("polynomial", {"a": 2.0}, 1), 0.25)


def test_the_16_device_latency_example_matches_independent_arithmetic():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "async" / "latency16.py"
    spec = importlib.util.spec_from_file_location("async_latency16", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    means = module.device_types(0)
    sync_s, async_s = module.clock_times(means, 0.0, 5.0, 0)
    assert sync_s == pytest.approx(10 * (400 + 2 * 5), rel=1e-4)  # the slowest, every round
    # deterministic times: the 160th arrival of devices that restart as soon as they deliver
    heap = [(m + 10.0, m) for m in means]
    heapq.heapify(heap)
    for _ in range(160):
        t, m = heapq.heappop(heap)
        heapq.heappush(heap, (t + m + 10.0, m))
    assert async_s == pytest.approx(t, rel=1e-4)


@pytest.mark.grpc
@pytest.mark.slow
def test_fedbuff_runs_unchanged_on_the_grpc_engine(tmp_path, capsys):
    from pathlib import Path

    from deploy_helpers import deploy_config
    from fedge.results import read_rows_csv

    config = deploy_config(tmp_path)
    sets = ["algorithm='fedbuff'", "asynchronous.concurrency=4", "asynchronous.buffer_size=3"]
    argv = ["deploy-local", str(config), "--set", "rounds=2", "--out", str(tmp_path / "d")]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0
    out = capsys.readouterr().out
    run_dir = Path(out.strip().splitlines()[-1].removeprefix("run: "))
    rows = read_rows_csv(run_dir / "metrics.csv")
    assert [r["version"] for r in rows] == [1.0, 2.0]
    assert all(r["applied"] == 3.0 and r["staleness_max"] >= 0 for r in rows)


@pytest.mark.grpc
def test_the_grpc_transport_answers_absent_for_a_failed_request_that_asks():
    from concurrent.futures import Future
    from types import SimpleNamespace

    from fedge.runtime.grpc.transport import GrpcTransport

    class Hub:
        settings = SimpleNamespace(call_timeout_s=5.0)

        def call(self, message, parts=None):
            done: Future = Future()
            if message.dst == "dev1":
                done.set_exception(ConnectionError("the device went away"))
            else:
                done.set_result(message.reply("update"))
            return done

    transport = GrpcTransport(Hub(), "cloud")
    asks = {"report_absent": True}
    transport.submit([Message("cloud", d, "train", 1, asks) for d in ("dev0", "dev1")])
    kinds = sorted((r.src, r.kind) for r in (transport.next_reply(), transport.next_reply()))
    assert kinds == [("dev0", "update"), ("dev1", "absent")]
    assert transport.next_reply() is None
    transport.submit([Message("cloud", "dev1", "train", 2)])  # not asked: nothing comes back
    assert transport.next_reply() is None

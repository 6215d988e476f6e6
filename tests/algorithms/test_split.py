"""Split learning, SplitFed, U-shaped, cloud dormancy and U_i weighting (SPEC §3F)."""

import pytest
import torch

from fedge.aggregation import weighted_mean
from fedge.algorithms.dormancy import DormancySwitch, throughput_weights
from fedge.core import ConfigError
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.results import read_json
from fedge.runs.run import run_experiment

SPLIT = ["model.name='lenet5'", "split.cut=3", "training.steps=6", "system.devices=6"]


def run_split(tiny_config, algorithm, rounds=1, extra=()):
    cfg = load_config(tiny_config, [f"algorithm='{algorithm}'", f"rounds={rounds}", *SPLIT, *extra])
    exp = build(cfg)
    history = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, rounds)
    return exp, history


# -- pure pieces --------------------------------------------------------------------------
def test_dormancy_follows_the_trace_with_hysteresis():
    sw = DormancySwitch(t0_s=0.1, hysteresis=0.2)  # dormant above 0.12, back at or below 0.08
    trace = [0.05, 0.11, 0.119, 0.13, 0.11, 0.09, 0.081, 0.08, 0.10, 0.121, 0.2, 0.05]
    modes = [sw.observe(t) for t in trace]
    expected = [False, False, False, True, True, True, True, False, False, True, True, False]
    assert modes == expected
    assert sw.switches == 4


def test_without_hysteresis_the_switch_is_the_papers_rule_and_t0_zero_disables_it():
    sw = DormancySwitch(t0_s=0.1, hysteresis=0.0)
    assert [sw.observe(t) for t in (0.1, 0.1001, 0.1, 0.3)] == [False, True, False, True]
    off = DormancySwitch(t0_s=0.0)
    assert not any(off.observe(t) for t in (1.0, 100.0)) and off.switches == 0
    with pytest.raises(ConfigError, match=r"split\.hysteresis"):
        DormancySwitch(0.1, hysteresis=1.0)


def test_u_weights_and_the_aggregate_equal_a_hand_computation():
    tasks, elapsed = [96.0, 32.0, 64.0], [4.0, 1.0, 8.0]
    u = throughput_weights(tasks, elapsed)
    assert u == [24.0, 32.0, 8.0]
    states = [
        {"w": torch.tensor([1.0, 0.0])},
        {"w": torch.tensor([0.0, 1.0])},
        {"w": torch.ones(2)},
    ]
    agg = weighted_mean(states, u)
    by_hand = torch.tensor([(24 + 8) / 64, (32 + 8) / 64])
    assert torch.allclose(agg["w"], by_hand)
    assert throughput_weights([3.0, 5.0], [0.0, 0.0]) == [3.0, 5.0]  # no clock: data size


# -- runs on the simulated engine ---------------------------------------------------------
def test_splitfed_charges_feature_maps_and_gradients_on_the_wan(tiny_config):
    exp, history = run_split(tiny_config, "splitfed", extra=["split.t0_ms=0"])
    stats = exp.transport.stats()
    row = history.metrics[0]
    batches = row["cloud_batches"]
    assert batches == 6 * row["edges"] and row["dormant_batches"] == 0
    samples = batches * 16
    feature_bytes = samples * 6 * 4 * 4 * 4  # lenet5 on 8x8 digits: 6x4x4 floats at cut 3
    assert stats["bytes_up_edge_cloud"] > feature_bytes + samples * 8  # maps and int64 labels
    assert stats["bytes_down_edge_cloud"] > feature_bytes  # the cut-layer gradients
    assert 0 <= row["accuracy"] <= 1 and 0 <= row["edge_accuracy"] <= 1
    assert set(history.final_state) == set(exp.model.state_dict())


def test_cloud_only_uploads_the_raw_input(tiny_config):
    exp0, _ = run_split(tiny_config, "splitfed", extra=["split.cut=0"])
    exp3, _ = run_split(tiny_config, "splitfed")
    up0 = exp0.transport.stats()["bytes_up_edge_cloud"]
    up3 = exp3.transport.stats()["bytes_up_edge_cloud"]
    samples = 6 * 2 * 16
    edge_bytes = [
        sum(v.numel() * 4 for v in e.coordinator.parts.edge_state().values()) for e in (exp0, exp3)
    ]
    # 1x8x8 inputs (64 floats) against 6x4x4 maps (96 floats), the two edges' parts going
    # up once, and a few header bytes (tensor shapes) per message
    expected = samples * 32 * 4 + 2 * (edge_bytes[1] - edge_bytes[0])
    assert up3 - up0 == pytest.approx(expected, rel=0.02)


def test_vanilla_split_takes_turns_and_splitfed_runs_edges_in_parallel(tiny_config):
    seq, _ = run_split(tiny_config, "split")
    par, _ = run_split(tiny_config, "splitfed")
    assert seq.transport.now() > 1.5 * par.transport.now()


def test_ushaped_never_sends_labels_to_the_cloud(tiny_config):
    cfg = load_config(tiny_config, ["algorithm='ushaped'", "rounds=1", *SPLIT])
    exp = build(cfg)
    cloud = exp.nodes.apps["cloud"]
    seen = []
    forward = cloud.handlers["split_forward"]

    def spy(message, ctx):
        seen.append(set(message.payload))
        return forward(message, ctx)

    cloud.on("split_forward", spy)
    history = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 1)
    assert seen and all(keys == {"features"} for keys in seen)
    assert history.metrics[0]["cloud_batches"] == len(seen)
    assert 0 <= history.metrics[0]["accuracy"] <= 1


def test_a_slow_wan_puts_the_master_edge_to_sleep_and_it_probes(tiny_config):
    slow = ["system.wan.latency_points=[[0.0, 0.5]]", "split.t0_ms=200", "split.probe_every=2"]
    exp, history = run_split(tiny_config, "splitfed", extra=[*slow, "split.master='edge0'"])
    row = history.metrics[0]
    assert row["mode_switches"] == 1  # only edge0 may sleep; it never wakes
    assert row["dormant_batches"] == 5  # first batch measured T_rd, the other five local
    assert row["cloud_batches"] == 6 + 1  # edge1 always collaborates
    baseline, _ = run_split(
        tiny_config, "splitfed", extra=["system.wan.latency_points=[[0.0, 0.5]]"]
    )
    assert (
        exp.transport.stats()["bytes_up_edge_cloud"]
        < baseline.transport.stats()["bytes_up_edge_cloud"]
    )


def test_dormancy_switches_back_when_the_trace_recovers(tiny_config):
    trace = "system.wan.latency_points=[[0.0, 0.5], [2.0, 0.01]]"
    _, history = run_split(
        tiny_config, "splitfed", rounds=2, extra=[trace, "split.t0_ms=200", "split.probe_every=1"]
    )
    total = sum(r["mode_switches"] for r in history.metrics)
    assert total >= 2 and total % 2 == 0  # slept, woke up, collaborating at the end
    assert history.metrics[-1]["dormant_edges"] == 0


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("split.cut=12", "split.cut"),
        ("split.master='edge9'", "split.master"),
        ("split.hysteresis=1.0", "split.hysteresis"),
        ("split.b=0", "split.b"),
        ("system.wan.latency_points=[[1.0, 0.1], [0.5, 0.1]]", "system.wan.latency_points"),
        ("system.wan.latency_trace='missing.csv'", "system.wan.latency_trace"),
    ],
)
def test_bad_split_settings_name_the_field(tiny_config, override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        cfg = load_config(tiny_config, ["algorithm='splitfed'", *SPLIT, override])
        build(cfg)


def test_latency_trace_file_and_tmoa_cut(tiny_config, tmp_path):
    csv = tmp_path / "wan.csv"
    csv.write_text("time_s,latency_s\n0,0.01\n10,0.3\n")
    extra = [f"system.wan.latency_trace='{csv.as_posix()}'", "split.cut='tmoa'"]
    cfg = load_config(tiny_config, ["algorithm='splitfed'", *SPLIT, *extra])
    exp = build(cfg)
    wan = exp.system.topology.wan
    assert wan.latency_at(5.0) == 0.01 and wan.latency_at(11.0) == 0.3
    assert 0 <= len(exp.coordinator.parts.head) <= 11  # TMOA may pick edge-only: clamped


@pytest.mark.parametrize("algorithm", ["splitfed", "ushaped"])
def test_a_split_run_writes_its_early_exit_curve(tiny_config, algorithm):
    overrides = [f"algorithm='{algorithm}'", "rounds=1", *SPLIT, "split.exit_threshold=0.75"]
    result = run_experiment(load_config(tiny_config, overrides), progress=False)
    points = read_json(result.run_dir / "early_exit.json")
    assert sorted(points[0]) == ["accuracy", "exit_fraction", "latency_ms", "threshold"]
    assert points[0]["threshold"] == 0 and points[0]["exit_fraction"] == 0
    assert points[0]["accuracy"] == pytest.approx(result.summary["accuracy"])
    assert points[-1]["exit_fraction"] == 1
    assert points[-1]["accuracy"] == pytest.approx(result.rows[-1]["edge_accuracy"])
    s = result.summary
    assert s["exit_threshold"] == 0.75 and 0 <= s["exit_fraction"] <= 1
    assert s["edge_only_latency_ms"] <= s["exit_latency_ms"] <= s["cloud_only_latency_ms"]
    # cloud-only end: two WAN latencies (50 ms each way by default) and the transfers
    assert s["cloud_only_latency_ms"] > 100


def test_a_split_run_is_reproducible_from_its_seed(tiny_config):
    first, h1 = run_split(tiny_config, "splitfed")
    second, h2 = run_split(tiny_config, "splitfed")
    exit1, exit2 = first.coordinator.parts.edge_state(), second.coordinator.parts.edge_state()
    for key in h1.final_state:
        assert torch.equal(h1.final_state[key], h2.final_state[key]), key
    assert all(torch.equal(exit1[k], exit2[k]) for k in exit1)
    assert h1.metrics[0]["accuracy"] == h2.metrics[0]["accuracy"]

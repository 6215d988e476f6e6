"""Adaptive κ1 for hierarchical FL: the AdaComm rule, its bounds, and what a run reports."""

import math
import pickle

import numpy as np
import pytest

from fedge.algorithms import HierarchicalFL
from fedge.algorithms.hierarchical import adacomm_kappa1
from fedge.core.errors import ConfigError
from fedge.experiment.build import build
from fedge.experiment.config import load_config


def test_adacomm_period_is_the_square_root_of_the_loss_ratio_times_the_first():
    assert adacomm_kappa1(4, 2.0, 2.0, (1, 4)) == 4
    assert adacomm_kappa1(4, 2.0, 0.5, (1, 4)) == 2  # sqrt(1/4)·4
    assert adacomm_kappa1(4, 2.0, 1.0, (1, 4)) == 3  # ceil(2.83)
    assert adacomm_kappa1(4, 2.0, 0.02, (1, 4)) == 1  # ceil(0.4)
    assert adacomm_kappa1(4, 2.0, 0.02, (2, 4)) == 2  # the lower bound
    assert adacomm_kappa1(4, 2.0, 8.0, (1, 4)) == 4  # the upper bound
    assert adacomm_kappa1(4, 2.0, 8.0, (1, 10)) == 8  # a rising loss lengthens it


def test_the_rule_follows_a_hand_made_loss_sequence():
    coordinator = HierarchicalFL(kappa1=8, kappa1_rule="adacomm")
    chosen = []
    for loss in (2.0, 1.0, 0.5, 0.125, math.nan, 0.02):
        coordinator.adapt_kappa1(loss)
        chosen.append(coordinator.current_kappa1())
    # ceil(sqrt(F/F0)·8) for F/F0 = 1, 1/2, 1/4, 1/16, (no loss: unchanged), 1/100
    assert chosen == [8, 6, 4, 2, 2, 1]
    assert pickle.loads(pickle.dumps(coordinator)).kappa1_state == coordinator.kappa1_state


def test_fixed_never_changes_kappa1():
    coordinator = HierarchicalFL(kappa1=3)
    for loss in (2.0, 0.1, 0.01):
        coordinator.adapt_kappa1(loss)
    assert coordinator.current_kappa1() == 3
    assert coordinator.kappa1_state == {}


def run_rounds(exp, coordinator, rounds):
    """Round metrics and the FLOPs the devices spent in each round."""
    state, metrics, flops = exp.initial_state, [], []
    for r in range(1, rounds + 1):
        before = exp.transport.stats().get("flops", 0.0)
        record = coordinator.step(exp.transport, state, exp.rng, r, rounds)
        flops.append(exp.transport.stats()["flops"] - before)
        state = record.state
        metrics.append(record.metrics)
    return metrics, flops


def test_a_hierarchical_run_reports_the_kappa1_of_every_round(tiny_config):
    sets = ["algorithm='hierarchical'", "federation.kappa1=4", "training.lr=0.5"]
    exp = build(load_config(tiny_config, sets))
    coordinator = HierarchicalFL(kappa1=4, kappa1_rule="adacomm", kappa1_params={"kappa1_min": 1})
    metrics, flops = run_rounds(exp, coordinator, 4)
    kappas = [m["kappa1"] for m in metrics]
    losses = [m["train_loss"] for m in metrics]
    assert kappas[0] == 4.0
    for r in range(1, 4):
        assert kappas[r] == adacomm_kappa1(4, losses[0], losses[r - 1], (1, 4))
    assert min(kappas) < 4.0  # the loss fell, so the period shrank
    # every attached device trains κ1 local epochs: the work per round scales with κ1
    per_local_round = [f / k for f, k in zip(flops, kappas, strict=True)]
    assert per_local_round == pytest.approx([per_local_round[0]] * 4, rel=1e-9)


def test_fixed_reports_kappa1_and_a_new_run_starts_afresh(tiny_config):
    exp = build(load_config(tiny_config, ["algorithm='hierarchical'", "federation.kappa1=2"]))
    metrics, _ = run_rounds(exp, HierarchicalFL(kappa1=2), 2)
    assert [m["kappa1"] for m in metrics] == [2.0, 2.0]
    adaptive = HierarchicalFL(kappa1=4, kappa1_rule="adacomm")
    adaptive.kappa1_state = {"loss0": 100.0, "kappa1": 1.0}  # left over from another run
    first = adaptive.step(exp.transport, exp.initial_state, np.random.default_rng(0), 1, 2)
    assert first.metrics["kappa1"] == 4.0


@pytest.mark.parametrize(
    ("rule", "params", "field"),
    [
        ("often", {}, "federation.kappa1_rule"),
        ("fixed", {"kappa1_min": 1}, "federation.kappa1_params.kappa1_min"),
        ("adacomm", {"kappa1_min": 0}, "federation.kappa1_params.kappa1_min"),
        ("adacomm", {"kappa1_min": 5}, "federation.kappa1_params.kappa1_min"),
        ("adacomm", {"kappa1_max": 3}, "federation.kappa1_params.kappa1_max"),
        ("adacomm", {"kappa1_max": 4.5}, "federation.kappa1_params.kappa1_max"),
        ("adacomm", {"tau0": 2}, "federation.kappa1_params.tau0"),
    ],
)
def test_bad_kappa1_settings_name_the_field(rule, params, field):
    with pytest.raises(ConfigError) as info:
        HierarchicalFL(kappa1=4, kappa1_rule=rule, kappa1_params=params)
    assert info.value.field == field

"""Early-exit inference: exits by entropy threshold, accuracy at both ends, the cost model."""

import math

import numpy as np
import pytest
import torch

from fedge.learning import build_model, from_arrays, profile
from fedge.learning.early_exit import (
    ExitCosts,
    ExitScores,
    default_thresholds,
    early_exit,
    exit_costs,
    exit_curve,
    exit_scores,
)
from fedge.learning.split import SplitModel

COSTS = ExitCosts(
    head_flops=2e6,
    exit_flops=1e6,
    tail_flops=5e6,
    feature_bytes=1000.0,
    return_bytes=40.0,
    edge_flops_per_s=1e9,  # edge: 3 ms
    cloud_flops_per_s=1e10,  # tail: 0.5 ms
    wan_bandwidth_bps=8e6,  # 1000 B up: 1 ms, 40 B back: 0.04 ms
    wan_latency_s=0.01,
)


def _trained_split(ushaped=False, cut=3, n=96):
    model = build_model("lenet5", (1, 28, 28), 10, seed=2)
    parts = SplitModel.build(model, cut, (1, 28, 28), 10, ushaped=ushaped)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() * 3 + (x[:, 0, 0, 0] > 0).long()
    opt = torch.optim.SGD([*model.parameters(), *parts.exit.parameters()], lr=0.05)
    for _ in range(5):  # a little training so that entropies spread out
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss = loss + torch.nn.functional.cross_entropy(parts.exit(parts.head(x)), y)
        loss.backward()
        opt.step()
    return parts, from_arrays(x.numpy(), y.numpy(), n_classes=10)


def test_exits_grow_with_the_threshold_and_the_ends_are_the_two_models():
    parts, data = _trained_split()
    thresholds = [0.0, 0.5, 1.0, 1.5, 2.0, 2.2, 100.0]
    points = early_exit(parts, data, thresholds, COSTS, batch_size=40)
    fractions = [p.exit_fraction for p in points]
    assert fractions == sorted(fractions)
    with torch.no_grad():
        full = (parts.full(data.x).argmax(1) == data.y).float().mean().item()
        edge = (parts.exit(parts.head(data.x)).argmax(1) == data.y).float().mean().item()
    assert points[0].exit_fraction == 0.0 and points[0].accuracy == pytest.approx(full)
    assert points[-1].exit_fraction == 1.0 and points[-1].accuracy == pytest.approx(edge)
    scores = exit_scores(parts, data)
    assert np.all(scores.entropy >= 0) and np.all(scores.entropy <= math.log(10) + 1e-6)
    assert parts.full.training  # modes restored


def test_the_latency_follows_the_cost_model_by_hand():
    scores = ExitScores(
        entropy=np.array([0.1, 0.5, 0.9, 1.2]),
        exit_correct=np.array([True, False, True, False]),
        full_correct=np.array([True, True, False, True]),
    )
    edge_ms = 3.0
    cloud_ms = 10 + 1 + 0.5 + 10 + 0.04  # up, tail, back
    points = exit_curve(scores, [0.0, 0.3, 1.0, 5.0], COSTS)
    assert [p.exit_fraction for p in points] == [0.0, 0.25, 0.75, 1.0]
    assert [p.accuracy for p in points] == [0.75, 0.75, 0.75, 0.5]
    expected = [edge_ms + cloud_ms, edge_ms + 0.75 * cloud_ms, edge_ms + 0.25 * cloud_ms, edge_ms]
    assert [p.latency_ms for p in points] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("ushaped", "cut"), [(False, 0), (False, 6), (True, 3)])
def test_costs_come_from_the_profiler_and_the_cut_shapes(ushaped, cut):
    model = build_model("lenet5", (1, 28, 28), 10, seed=0)
    parts = SplitModel.build(model, cut, (1, 28, 28), 10, ushaped=ushaped)
    costs = exit_costs(parts, (1, 28, 28), 10, 1e12, 1e14, 20e6, 0.05)
    whole = profile(model, (1, 28, 28)).flops_forward
    assert costs.head_flops + costs.tail_flops + costs.last_flops == pytest.approx(whole)
    if cut == 0:
        assert costs.head_flops == 0 and costs.feature_bytes == 4 * 28 * 28
    assert (costs.last_flops > 0) == ushaped
    assert costs.return_bytes == (4 * 84 if ushaped else 4 * 10)  # LeNet's fc2 out, or logits


def test_default_thresholds_end_with_one_that_always_exits():
    ts = default_thresholds(10)
    assert ts[0] == 0.0 and ts == sorted(ts) and ts[-1] > math.log(10)

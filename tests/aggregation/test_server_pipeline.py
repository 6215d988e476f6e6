"""The server pipeline: one kind per aggregation, the reference reaches the aggregator, and
the server optimizer gets the mean delta; oracles are computed by hand in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedge.aggregation import aggregate
from fedge.aggregation.pipeline import Aggregate, ServerPipeline, same_kind
from fedge.core.errors import ConfigError
from fedge.core.update import Update, delta

RNG = np.random.default_rng(0)


def _state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=gen), "n": torch.tensor(seed)}


def test_states_only_aggregate_exactly_as_before():
    ref = _state(0)
    updates = [Update(_state(i), weight=float(i), origin=f"d{i}") for i in (1, 2, 3)]
    new = ServerPipeline().run(ref, updates, RNG)
    old = aggregate("mean", updates, RNG)
    assert all(torch.equal(new[k], old[k]) for k in old)


def test_deltas_and_states_mix_as_reference_plus_the_mean_delta():
    ref = _state(0)
    a, b = _state(1), _state(2)
    updates = [
        Update(a, weight=1.0, origin="a"),
        Update(delta(b, ref), weight=3.0, kind="delta", origin="b"),
    ]
    assert [u.kind for u in same_kind(updates, ref)] == ["delta", "delta"]
    new = ServerPipeline().run(ref, updates, RNG)
    w = (
        ref["w"].double()
        + (1.0 * (a["w"].double() - ref["w"]) + 3.0 * (b["w"].double() - ref["w"])) / 4
    )
    torch.testing.assert_close(new["w"], w.float())
    assert new["n"] == 2  # integer buffers take the largest new value


def test_server_optimizer_receives_the_mean_delta():
    ref = {"w": torch.zeros(3)}
    updates = [Update({"w": torch.tensor([1.0, 2.0, 3.0])}, kind="delta", origin="a")]
    pipe = ServerPipeline(server_optimizer="fedavgm", server_params={"lr": 0.5, "momentum": 0.9})
    first = pipe.run(ref, updates, RNG)  # v = Δ, w = 0 + 0.5·Δ
    torch.testing.assert_close(first["w"], torch.tensor([0.5, 1.0, 1.5]))
    second = pipe.run(first, updates, RNG)  # v = 0.9·Δ + Δ, w += 0.5·1.9·Δ
    torch.testing.assert_close(second["w"], torch.tensor([0.5, 1.0, 1.5]) * (1 + 1.9))


def test_clipped_mean_gets_the_reference_and_clips_each_change():
    ref = {"w": torch.ones(2)}
    far = Update({"w": torch.tensor([4.0, 5.0])}, origin="far")  # change (3, 4): norm 5
    near = Update({"w": torch.tensor([1.3, 1.4])}, origin="near")  # change (0.3, 0.4): 0.5
    pipe = ServerPipeline("clipped_mean", {"max_norm": 1.0})
    new = pipe.run(ref, [far, near], RNG)
    expected = torch.ones(2) + (torch.tensor([0.6, 0.8]) + torch.tensor([0.3, 0.4])) / 2
    torch.testing.assert_close(new["w"], expected)


def test_aggregate_keeps_both_forms():
    ref = {"w": torch.tensor([1.0, 2.0])}
    agg = Aggregate(ref, {"w": torch.tensor([0.5, -1.0])}, "delta")
    torch.testing.assert_close(agg.state()["w"], torch.tensor([1.5, 1.0]))
    assert agg.delta()["w"].dtype == torch.float64


def test_no_updates_keep_the_model():
    ref = _state(0)
    assert ServerPipeline().run(ref, [], RNG) is ref


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"aggregator": "avg"}, "federation.aggregator"),
        ({"aggregator": "trimmed_mean", "aggregator_params": {"trim": 0.1}}, "trimmed_mean"),
        ({"server_optimizer": "fedadam", "server_params": {"lrr": 1.0}}, "fedadam"),
    ],
)
def test_bad_parameters_are_rejected_when_built(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ServerPipeline(**kwargs)

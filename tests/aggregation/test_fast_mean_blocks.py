"""weighted_mean's blocked float64 accumulation gives exactly the plain expression's bits."""

from __future__ import annotations

import pytest
import torch

import fedge.aggregation.mean as mean_module
from fedge.aggregation.mean import weighted_mean


def _plain(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict:
    """Σ w_i s_i / Σ w_i entry by entry, as one whole-tensor float64 expression per state."""
    total = sum(weights)
    out = {}
    for key, ref in states[0].items():
        if not ref.is_floating_point():
            out[key] = torch.stack([s[key] for s in states]).amax(dim=0)
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for w, s in zip(weights, states, strict=True):
            acc = acc + w * s[key].to(torch.float64)
        out[key] = (acc / total).to(ref.dtype)
    return out


def _states(k: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "conv.weight": torch.randn(8, 3, 5, 5, generator=g) * 10 ** (i % 5 - 2),
            "fc.weight": torch.randn(37, 29, generator=g),
            "fc.bias": torch.randn(29, generator=g).to(torch.float16),
            "scale": torch.randn((), generator=g, dtype=torch.float64),
            "empty": torch.zeros(0, 3),
            "bn.num_batches_tracked": torch.tensor(i + 3),
        }
        for i in range(k)
    ]


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 17])
@pytest.mark.parametrize(
    "weights",
    [
        [600.0, 123.0, 1.0, 45.0, 9.0],
        [0.1, 1 / 3, 2.718281828, 1e-7, 12345.678],  # products not exact in float64
    ],
)
def test_blocked_sum_equals_the_plain_expression(
    monkeypatch: pytest.MonkeyPatch, block: int, weights: list[float]
) -> None:
    monkeypatch.setattr(mean_module, "BLOCK", block)
    states = _states(len(weights))
    got, want = weighted_mean(states, weights), _plain(states, weights)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape
        assert torch.equal(got[key], want[key]), key


def test_order_of_the_states_is_the_order_of_the_sum() -> None:
    """Float sums depend on order: the mean follows the list, it does not reorder it."""
    states = [{"w": torch.tensor([1e16, 1.0])}, {"w": torch.tensor([1.0, 1e16])}]
    states = [{"w": s["w"].double()} for s in states] + [{"w": torch.tensor([-1e16, -1e16])}]
    weights = [1.0, 1.0, 1.0]
    got = weighted_mean(states, weights)["w"]
    assert torch.equal(got, _plain(states, weights)["w"])
    reordered = weighted_mean(states[::-1], weights)["w"]
    assert torch.equal(reordered, _plain(states[::-1], weights)["w"])
    assert not torch.equal(got, reordered)


def test_inputs_are_left_unchanged() -> None:
    states = _states(3, seed=1)
    before = [{k: v.clone() for k, v in s.items()} for s in states]
    weighted_mean(states, [1.0, 2.0, 3.0])
    for s, b in zip(states, before, strict=True):
        assert all(torch.equal(s[k], b[k]) for k in s)

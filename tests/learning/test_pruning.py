"""Magnitude masks, the adaptive sparsity schedule and the DPMN regulariser J."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.core import ConfigError
from fedge.learning.pruning import (
    MaskHook,
    NeighbourPull,
    adaptive_sparsity,
    apply_mask,
    magnitude_mask,
    mask_density,
    mask_overlap,
    prunable_keys,
    regulariser,
    regulariser_grad,
)


def tiny_state(seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(6, 5, generator=g, dtype=dtype),
        "fc1.bias": torch.randn(6, generator=g, dtype=dtype),
        "conv.weight": torch.randn(2, 3, 2, 2, generator=g, dtype=dtype),
        "bn.num_batches_tracked": torch.tensor(7),
    }


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=2, max_size=3),
    sparsity=st.floats(0.0, 0.99),
    seed=st.integers(0, 1000),
)
def test_mask_holds_target_sparsity(shape: list[int], sparsity: float, seed: int) -> None:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    mask = magnitude_mask({"w": w}, sparsity)["w"]
    assert mask.dtype == torch.bool and mask.shape == w.shape
    pruned = int((~mask).sum())
    assert abs(pruned - sparsity * w.numel()) <= 1
    assert abs((1 - mask_density({"w": mask})) - sparsity) <= 1 / w.numel()


def test_largest_weights_are_kept_and_ties_are_deterministic() -> None:
    w = torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 0.05]])
    mask = magnitude_mask({"w": w}, 0.5)["w"]
    assert mask.tolist() == [[False, True, True], [True, False, False]]
    kept_min = w.abs()[mask].min()
    assert bool((w.abs()[~mask] <= kept_min).all())
    ties = torch.ones(2, 4)
    first = magnitude_mask({"w": ties}, 0.5)["w"]
    assert torch.equal(first, magnitude_mask({"w": ties.clone()}, 0.5)["w"])
    assert int(first.sum()) == 4


def test_default_keys_skip_biases_and_buffers() -> None:
    state = tiny_state()
    assert prunable_keys(state) == ["fc1.weight", "conv.weight"]
    assert set(magnitude_mask(state, 0.5)) == {"fc1.weight", "conv.weight"}
    with pytest.raises(ConfigError, match="sparsity"):
        magnitude_mask(state, 1.0)
    with pytest.raises(ConfigError, match=r"pruning\.keys"):
        magnitude_mask(state, 0.5, keys=["nope"])


def test_apply_mask_zeros_outside_and_returns_new_objects() -> None:
    state = tiny_state()
    mask = magnitude_mask(state, 0.7)
    out = apply_mask(state, mask)
    assert out is not state and out["fc1.weight"] is not state["fc1.weight"]
    for k, m in mask.items():
        assert torch.equal(out[k][~m], torch.zeros(int((~m).sum()), dtype=out[k].dtype))
        assert torch.equal(out[k][m], state[k][m])
    assert torch.equal(out["fc1.bias"], state["fc1.bias"])
    assert torch.equal(out["bn.num_batches_tracked"], state["bn.num_batches_tracked"])


def test_mask_overlap_is_logical_and() -> None:
    a = {"w": torch.tensor([True, True, False, False]), "only_a": torch.tensor([True, False])}
    b = {"w": torch.tensor([True, False, True, False])}
    m = mask_overlap(a, b)
    assert m["w"].tolist() == [True, False, False, False]
    assert m["only_a"].tolist() == [True, False]
    assert mask_density(m) == pytest.approx(2 / 6)


@settings(max_examples=30, deadline=None)
@given(rounds=st.integers(1, 60), target=st.floats(0.0, 0.95), warmup=st.integers(0, 10))
def test_schedule_is_monotone_and_ends_at_target(rounds: int, target: float, warmup: int) -> None:
    s = [adaptive_sparsity(r, rounds, target, warmup) for r in range(rounds + 3)]
    assert all(b >= a for a, b in itertools.pairwise(s))
    assert all(0.0 <= x <= target for x in s)
    assert s[rounds - 1] == target and s[-1] == target
    assert all(x == 0.0 for x in s[: min(warmup, rounds - 1)])


def test_schedule_is_the_cubic_ramp() -> None:
    # 11 rounds, no warmup: progress r/10; s = 0.8·(1 − (1 − r/10)^3).
    assert adaptive_sparsity(5, 11, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))
    assert adaptive_sparsity(0, 11, 0.8) == 0.0
    with pytest.raises(ConfigError, match="rounds"):
        adaptive_sparsity(0, 0, 0.5)


def test_closed_form_gradient_matches_autograd() -> None:
    x_i, x_j = tiny_state(1), tiny_state(2)
    x_i = {k: v * 0.3 if v.is_floating_point() else v for k, v in x_i.items()}
    x_j = {k: v * 0.3 if v.is_floating_point() else v for k, v in x_j.items()}
    m_ij = mask_overlap(magnitude_mask(x_i, 0.4), magnitude_mask(x_j, 0.6))
    params = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in x_i.items()}
    value = regulariser(params, x_j, m_ij)
    value.backward()
    grad = regulariser_grad(x_i, x_j, m_ij)
    assert set(grad) == {"fc1.weight", "fc1.bias", "conv.weight"}
    for k, g in grad.items():
        auto = params[k].grad
        assert auto is not None
        torch.testing.assert_close(g, auto)
    assert 0.0 < float(value.detach()) < 1.0


def test_j_is_zero_for_identical_models_and_tends_to_one() -> None:
    x = tiny_state(3)
    mask = magnitude_mask(x, 0.5)
    assert float(regulariser(x, x, mask)) == 0.0
    far = {k: v + 100.0 if v.is_floating_point() else v for k, v in x.items()}
    assert float(regulariser(x, far, mask)) == pytest.approx(1.0)
    # Differences outside the overlap do not count.
    hidden = {k: torch.where(mask[k], v, v + 100.0) if k in mask else v for k, v in x.items()}
    assert float(regulariser(x, hidden, mask)) == 0.0
    assert math.isclose(sum(float(g.abs().sum()) for g in regulariser_grad(x, x, mask).values()), 0)


def _pull_setup() -> tuple[torch.nn.Module, list[tuple[dict, dict]]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)
    ).double()
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    neighbours = []
    for seed in (1, 2, 3):
        g = torch.Generator().manual_seed(seed)
        x_j = {
            k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in own.items()
        }
        m_ij = {k: torch.rand(v.shape, generator=g) > 0.4 for k, v in own.items() if v.dim() >= 2}
        neighbours.append((x_j, m_ij))
    return model, neighbours


def test_neighbour_pull_adds_the_gradient_of_lambda_h_on_top_of_the_loss() -> None:
    model, neighbours = _pull_setup()
    lam = 0.7
    params = dict(model.named_parameters())
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    h = sum(regulariser(params, x_j, m) for x_j, m in neighbours) / len(neighbours)
    (model(x).pow(2).sum() + lam * h).backward()
    expected = {k: p.grad.clone() for k, p in params.items()}
    model.zero_grad(set_to_none=True)
    model(x).pow(2).sum().backward()
    pull = NeighbourPull(model, neighbours, lam)
    pull.before_step()
    for k, p in params.items():
        torch.testing.assert_close(p.grad, expected[k])
    assert pull.value == pytest.approx(float(h.detach()))


def test_neighbour_pull_with_lambda_zero_leaves_the_gradient_alone() -> None:
    model, neighbours = _pull_setup()
    model(torch.ones(2, 4, dtype=torch.float64)).sum().backward()
    before = {k: p.grad.clone() for k, p in model.named_parameters()}
    NeighbourPull(model, neighbours, 0.0).before_step()
    for k, p in model.named_parameters():
        assert torch.equal(p.grad, before[k])


def test_mask_hook_keeps_pruned_weights_at_zero() -> None:
    model, _ = _pull_setup()
    mask = magnitude_mask(dict(model.state_dict()), 0.5)
    hook = MaskHook(model, mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        model(torch.ones(2, 4, dtype=torch.float64)).pow(2).sum().backward()
        opt.step()
        hook.after_step()
    for k, m in mask.items():
        assert bool((dict(model.named_parameters())[k][~m] == 0).all())
        assert bool((dict(model.named_parameters())[k][m] != 0).all())

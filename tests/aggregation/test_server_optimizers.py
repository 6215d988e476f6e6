"""Server optimizers (Reddi et al. 2021): hand-computed steps, purity, checkpoints, config."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.aggregation import SERVER_OPTIMIZERS, make_server_optimizer
from fedge.core import ConfigError, ModelState
from fedge.core.update import clone_state, delta

NAMES = ["none", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]


def states(seed: int) -> tuple[ModelState, ModelState]:
    """(global, aggregate): float32 weights plus an integer BatchNorm counter."""
    gen = torch.Generator().manual_seed(seed)
    glob = {"w": torch.randn(3, 4, generator=gen), "n": torch.tensor(5)}
    agg = {"w": glob["w"] + 0.1 * torch.randn(3, 4, generator=gen), "n": torch.tensor(9)}
    return glob, agg


def test_registry_holds_every_optimizer() -> None:
    assert set(NAMES) <= set(SERVER_OPTIMIZERS.names())


def test_none_returns_the_aggregate() -> None:
    """Without a server optimizer the step is global + mean delta: the aggregate again."""
    glob, agg = states(0)
    out = make_server_optimizer("none").step(glob, delta(agg, glob))
    torch.testing.assert_close(out["w"], agg["w"])
    assert torch.equal(out["n"], agg["n"])
    assert out["w"] is not agg["w"]


def test_fedavgm_without_momentum_is_plain_fedavg() -> None:
    opt = make_server_optimizer("fedavgm", lr=1.0, momentum=0.0)
    glob, agg = states(1)
    for seed in range(3):
        out = opt.step(glob, delta(agg, glob))
        torch.testing.assert_close(out["w"], agg["w"])
        glob, agg = out, {"w": out["w"] + torch.full((3, 4), 0.1 * seed), "n": agg["n"]}


def test_fedavgm_accumulates_momentum() -> None:
    opt = make_server_optimizer("fedavgm", lr=0.5, momentum=0.9)
    w0 = {"w": torch.tensor([0.0])}
    w1 = opt.step(w0, delta({"w": torch.tensor([2.0])}, w0))  # v = 2, w = 0 + 0.5·2
    assert w1["w"].item() == pytest.approx(1.0)
    w2 = opt.step(w1, delta({"w": torch.tensor([2.0])}, w1))  # v = 0.9·2 + 1, w = 1 + 0.5·2.8
    assert w2["w"].item() == pytest.approx(2.4)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_first_step_by_hand(name: str) -> None:
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    params = {"lr": lr, "beta1": b1, "tau": tau} | ({} if name == "fedadagrad" else {"beta2": b2})
    opt = make_server_optimizer(name, **params)
    glob = {"w": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)}
    agg = {"w": torch.tensor([1.5, -2.0, 0.4996], dtype=torch.float64)}
    d = agg["w"] - glob["w"]
    m = (1 - b1) * d
    v = {
        "fedadam": b2 * tau**2 + (1 - b2) * d**2,
        "fedyogi": tau**2 - (1 - b2) * d**2 * torch.sign(tau**2 - d**2),
        "fedadagrad": tau**2 + d**2,
    }[name]
    expected = glob["w"] + lr * m / (v.sqrt() + tau)
    torch.testing.assert_close(opt.step(glob, delta(agg, glob))["w"], expected)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), name=st.sampled_from(NAMES))
def test_steps_are_pure_typed_and_keep_integer_buffers(seed: int, name: str) -> None:
    glob, agg = states(seed)
    before = (clone_state(glob), clone_state(agg))
    out = make_server_optimizer(name).step(glob, delta(agg, glob))
    for original, kept in zip((glob, agg), before, strict=True):
        assert all(torch.equal(original[k], kept[k]) for k in kept)
    assert out["w"].dtype == torch.float32
    assert torch.equal(out["n"], agg["n"])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), name=st.sampled_from(NAMES))
def test_zero_pseudo_gradient_on_the_first_step_keeps_the_model(seed: int, name: str) -> None:
    glob, _ = states(seed)
    out = make_server_optimizer(name).step(glob, delta(clone_state(glob), glob))
    torch.testing.assert_close(out, glob)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    first, second = make_server_optimizer(name), make_server_optimizer(name)
    glob, agg = states(2)
    mid = first.step(glob, delta(agg, glob))
    second.load_state_dict(first.state_dict())
    nxt = {"w": mid["w"] + 0.05, "n": agg["n"]}
    d = delta(nxt, mid)
    torch.testing.assert_close(first.step(mid, d), second.step(mid, d))


def test_mismatched_states_are_rejected() -> None:
    opt = make_server_optimizer("fedadam")
    with pytest.raises(ValueError, match="'w'"):
        opt.step({"w": torch.zeros(2)}, {"w": torch.zeros(3)})


def test_unknown_optimizer_lists_the_known_names() -> None:
    with pytest.raises(ConfigError, match="server_optimizer") as err:
        make_server_optimizer("fedsgd")
    assert all(name in str(err.value) for name in NAMES)


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(ConfigError, match="beta3") as err:
        make_server_optimizer("fedadam", beta3=0.5)
    assert "beta2" in str(err.value)
    with pytest.raises(ConfigError, match="beta2"):
        make_server_optimizer("fedadagrad", beta2=0.9)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("fedadam", {"beta1": 1.0}, "beta1"),
        ("fedyogi", {"tau": 0.0}, "tau"),
        ("fedavgm", {"lr": -1.0}, "lr"),
        ("fedavgm", {"momentum": "high"}, "momentum"),
    ],
)
def test_bad_values_are_rejected(name: str, params: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        make_server_optimizer(name, **params)

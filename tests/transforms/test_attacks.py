"""Each attack kind does what it says, on hand-made updates and samples."""

import numpy as np
import pytest
import torch

from fedge.core.errors import ConfigError
from fedge.core.update import Update
from fedge.transforms.attacks import ATTACKS, Scheduled


def make(kind, **params):
    return ATTACKS.get(kind)(**params)


def delta_update(seed=0, round=1):
    gen = torch.Generator().manual_seed(seed)
    state = {"w": torch.randn(30, 20, generator=gen), "n": torch.tensor(7)}
    return Update(state, 12.0, "delta", origin="dev0", round=round)


def send(attack, update, seed=0):
    return attack.send(update, {}, np.random.default_rng(seed))


def test_sign_flip_negates_the_delta_and_keeps_buffers():
    u = delta_update()
    out = send(make("sign_flip"), u)
    assert torch.equal(out.state["w"], -u.state["w"])
    assert int(out.state["n"]) == 7 and out.weight == u.weight and out.kind == "delta"
    assert torch.allclose(send(make("sign_flip", scale=4.0), u).state["w"], -4.0 * u.state["w"])


def test_scaled_multiplies_the_delta():
    u = delta_update()
    assert torch.allclose(send(make("scaled", scale=-5.0), u).state["w"], -5.0 * u.state["w"])


def test_gaussian_adds_noise_of_the_given_scale():
    u = Update({"w": torch.full((400, 400), 3.0)}, kind="delta", round=1)
    noise = (send(make("gaussian", std=0.5), u).state["w"] - 3.0).flatten().double()
    n = noise.numel()
    # mean within 4 standard errors of 0; sample std within 2 %
    assert abs(float(noise.mean())) < 4 * 0.5 / n**0.5
    assert float(noise.std()) == pytest.approx(0.5, rel=0.02)
    again = send(make("gaussian", std=0.5), u).state["w"]
    assert torch.equal(again - 3.0, noise.reshape(400, 400).float())  # seeded by its rng


def test_gaussian_relative_replace_is_noise_of_the_tensor_spread():
    u = Update({"w": torch.randn(300, 300) * 0.1}, kind="state", round=1)
    out = send(make("gaussian", std=10.0, relative=True, replace=True), u).state["w"]
    assert float(out.std()) == pytest.approx(10.0 * float(u.state["w"].std()), rel=0.03)
    assert (
        abs(float(torch.corrcoef(torch.stack([out.flatten(), u.state["w"].flatten()]))[0, 1]))
        < 0.02
    )


def test_free_rider_returns_the_model_with_its_claimed_count():
    u = delta_update()
    out = send(make("free_rider", claimed_samples=500), u)
    assert float(out.state["w"].abs().max()) == 0.0 and out.weight == 500.0
    noisy = send(make("free_rider", noise_std=0.01), u)
    assert noisy.weight == u.weight
    assert float(noisy.state["w"].std()) == pytest.approx(0.01, rel=0.2)


def test_label_flip_flips_labels():
    x, y = torch.zeros(6, 2), torch.tensor([0, 1, 2, 3, 4, 1])
    _, flipped = make("label_flip").poison(x, y, 5, np.random.default_rng(0))
    assert flipped.tolist() == [4, 3, 2, 1, 0, 3]
    _, one = make("label_flip", source=1, target=3).poison(x, y, 5, np.random.default_rng(0))
    assert one.tolist() == [0, 3, 2, 3, 4, 3]


def test_backdoor_stamps_the_trigger_on_its_share_and_relabels():
    x, y = torch.rand(40, 1, 8, 8) * 0.5, torch.arange(40) % 4
    attack = make("backdoor", target=2, fraction=0.25, size=3)
    attack.prepare(torch.ones(1, 1, 8, 8))
    px, py = attack.poison(x, y, 4, np.random.default_rng(0))
    stamped = [i for i in range(40) if torch.all(px[i, 0, -3:, -3:] == 1.0)]
    assert len(stamped) == 10
    assert all(int(py[i]) == 2 for i in stamped)
    others = [i for i in range(40) if i not in stamped]
    assert torch.equal(px[others], x[others]) and torch.equal(py[others], y[others])
    assert torch.equal(px[stamped][..., :5, :], x[stamped][..., :5, :])  # only the corner


def test_attacks_start_at_start_round():
    scheduled = Scheduled(make("sign_flip"), start_round=3)
    early, late = delta_update(round=2), delta_update(round=3)
    assert send(scheduled, early) is early
    assert torch.equal(send(scheduled, late).state["w"], -late.state["w"])


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("sign_flip", {"scale": 0.0}, "scale"),
        ("gaussian", {"std": -1.0}, "std"),
        ("backdoor", {"fraction": 1.5}, "fraction"),
        ("label_flip", {"source": 1}, "source"),
        ("free_rider", {"claimed_samples": 0}, "claimed_samples"),
    ],
)
def test_bad_parameters_name_the_field(kind, params, field):
    with pytest.raises(ConfigError) as err:
        make(kind, **params)
    assert err.value.field == field

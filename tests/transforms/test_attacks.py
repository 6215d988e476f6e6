import numpy as np
import pytest
import torch

from fedge.core.errors import ConfigError
from fedge.transforms.attacks import poison_state


def test_scaled_poison_multiplies_floats_and_keeps_buffers():
    state = {"w": torch.randn(4, 5), "n": torch.tensor(7)}
    out = poison_state(state, "scaled", -5.0, np.random.default_rng(0))
    assert torch.allclose(out["w"], -5.0 * state["w"])
    assert int(out["n"]) == 7


def test_random_poison_has_the_scaled_spread_and_is_seeded():
    state = {"w": torch.randn(200, 200) * 0.1}
    a = poison_state(state, "random", 10.0, np.random.default_rng(1))
    b = poison_state(state, "random", 10.0, np.random.default_rng(1))
    assert torch.equal(a["w"], b["w"])
    assert float(a["w"].std()) == pytest.approx(10.0 * float(state["w"].std()), rel=0.05)


def test_unknown_mode_is_rejected():
    with pytest.raises(ConfigError, match="malicious_mode"):
        poison_state({"w": torch.ones(2)}, "flip", 1.0, np.random.default_rng(0))

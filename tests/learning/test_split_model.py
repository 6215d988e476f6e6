"""Cutting a model into head and tail: same outputs and same gradients as the whole model."""

import pytest
import torch
import torch.nn.functional as F

from fedge.core import ConfigError
from fedge.learning import build_model, profile_blocks
from fedge.learning.split import SplitModel, exit_head, split_model, split_ushaped


def _grads(modules):
    return {k: p.grad.clone() for m in modules for k, p in m.named_parameters()}


def _data(shape=(1, 28, 28), n=8):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize(("name", "cut"), [("lenet5", 1), ("lenet5", 3), ("lenet5", 8), ("mlp", 2)])
def test_split_forward_and_backward_match_the_whole_model(name, cut):
    model = build_model(name, (1, 28, 28), 10, seed=1)
    x, y = _data()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    whole = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    head, tail = split_model(model, cut)
    h = head(x)
    sent = h.detach().requires_grad_(True)  # what the wire carries up
    out = tail(sent)
    assert torch.allclose(out, model(x))
    F.cross_entropy(out, y).backward()
    h.backward(sent.grad)  # the cut-layer gradient the cloud returns
    split = {k: p.grad for k, p in model.named_parameters()}
    assert split.keys() == whole.keys()
    for k in whole:
        assert torch.allclose(split[k], whole[k], atol=1e-6), k
    # the parts' keys are the model's own keys
    assert set(head.state_dict()) | set(tail.state_dict()) == set(model.state_dict())


def test_cut_zero_is_cloud_only_and_the_cut_range_is_checked():
    model = build_model("lenet5", (1, 28, 28), 10)
    n = len(profile_blocks(model, (1, 28, 28)).layers)
    head, tail = split_model(model, 0)
    assert len(head) == 0 and len(tail) == n
    for bad in (-1, n):
        with pytest.raises(ConfigError, match=rf"split\.cut.*0\.\.{n - 1}"):
            split_model(model, bad)
    with pytest.raises(ConfigError, match=rf"split\.cut.*0\.\.{n - 2}"):
        split_ushaped(model, n - 1)


def test_ushaped_parts_compose_to_the_model():
    model = build_model("lenet5", (1, 28, 28), 10, seed=2)
    head, body, last = split_ushaped(model, 3)
    x, _ = _data()
    assert torch.allclose(last(body(head(x))), model(x))
    assert list(last.state_dict()) == ["fc3.weight", "fc3.bias"]


def test_exit_head_and_edge_state_round_trip():
    model = build_model("lenet5", (1, 28, 28), 10, seed=2)
    parts = SplitModel.build(model, 3, (1, 28, 28), 10)
    x, _ = _data()
    assert parts.edge_model()(x).shape == (8, 10)
    assert exit_head((120,), 10)(torch.zeros(2, 120)).shape == (2, 10)
    state = parts.edge_state()
    assert {k for k in state if k.startswith("exit.")} == {"exit.fc.weight", "exit.fc.bias"}
    zeroed = {k: torch.zeros_like(v) for k, v in state.items()}
    parts.load_edge_state(zeroed)
    assert float(model.conv1.weight.detach().abs().sum()) == 0.0
    assert float(parts.exit.fc.weight.detach().abs().sum()) == 0.0

"""The reference models' max pooling: the inference fast path gives PyTorch's values; and
evaluation, which splits a batch of a per-sample model into smaller forward passes, gives
exactly what a plain loop over whole batches gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fedge.learning.training as training
from fedge.learning import evaluate
from fedge.learning.data import ArrayDataset
from fedge.learning.layers import MaxPool2d, per_sample, tiled_max_pool2d
from fedge.learning.models import build_model


def _inputs(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random values with repeats (ties), signed zeros, infinities and a NaN."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, shape, generator=g).float() * 0.5
    flat = x.view(-1)
    flat[::7] = torch.randn(flat[::7].shape, generator=g)
    flat[3::11] = float("inf")
    flat[5::13] = float("-inf")
    flat[2::17] = -0.0
    if flat.numel() > 1:
        flat[1] = float("nan")
    return x


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    ("shape", "kernel"),
    [
        ((2, 3, 8, 8), (2, 2)),
        ((2, 3, 9, 6), (3, 3)),
        ((1, 2, 4, 6), (2, 3)),
        ((3, 6, 10), (2, 5)),
        ((2, 1, 5, 5), (1, 1)),
        ((0, 2, 4, 4), (2, 2)),
    ],
)
def test_tiled_pooling_equals_pytorch_max_pooling(
    shape: tuple[int, ...], kernel: tuple[int, int]
) -> None:
    x = _inputs(shape)
    _same(tiled_max_pool2d(x, *kernel), F.max_pool2d(x, kernel))


def test_module_takes_the_fast_path_only_without_a_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    pool, x = MaxPool2d(2), _inputs((4, 3, 6, 8))
    expected = F.max_pool2d(x, 2)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("PyTorch's pooling ran")

    with monkeypatch.context() as patch:
        patch.setattr(F, "max_pool2d", refuse)
        with torch.no_grad():
            _same(pool(x), expected)
        with torch.inference_mode():
            _same(pool(x), expected)
        _same(pool(x), expected)  # an input that needs no gradient records nothing
        with pytest.raises(AssertionError, match="pooling ran"):
            pool(x.clone().requires_grad_(True))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 2, "stride": 1},
        {"kernel_size": 2, "padding": 1},
        {"kernel_size": 2, "dilation": 2},
        {"kernel_size": 2, "ceil_mode": True},
        {"kernel_size": 3},  # 8 is not a multiple of 3: the last rows are dropped
        {"kernel_size": (2, 4), "stride": (2, 4)},
    ],
)
def test_other_settings_match_nn_max_pool(kwargs: dict) -> None:
    x = _inputs((2, 3, 8, 8))
    with torch.no_grad():
        _same(MaxPool2d(**kwargs)(x), nn.MaxPool2d(**kwargs)(x))
        _same(MaxPool2d(2)(x.transpose(2, 3)), F.max_pool2d(x.transpose(2, 3), 2))
    out, idx = MaxPool2d(2, return_indices=True)(x)
    ref_out, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    _same(out, ref_out)
    assert torch.equal(idx, ref_idx)


def test_training_gradients_are_pytorch_pooling_ones() -> None:
    """Ties inside a window: PyTorch sends the gradient to the first maximum only."""
    x = torch.tensor([[[[1.0, 1.0, 2.0, 0.0], [1.0, 0.5, 2.0, 2.0]]]])
    grads = []
    for pool in (MaxPool2d(2), nn.MaxPool2d(2)):
        leaf = x.clone().requires_grad_(True)
        (pool(leaf) * torch.tensor([3.0, 5.0])).sum().backward()
        grads.append(leaf.grad)
    assert grads[0] is not None and grads[1] is not None
    assert torch.equal(grads[0], grads[1])
    assert grads[0].count_nonzero() == 2


def _plain_evaluation(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """Mean loss and accuracy by a loop written here: a copy of the model with PyTorch's own
    pooling, the same batches, each batch's summed cross-entropy added up in a Python
    float (the order evaluate() defines)."""
    plain = nn.Sequential(
        *(
            nn.MaxPool2d(m.kernel_size, m.stride) if isinstance(m, MaxPool2d) else m
            for m in model.children()
        )
    ).eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            logits = plain(x[start : start + batch_size])
            target = y[start : start + batch_size]
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(dim=1) == target).sum())
    return loss / len(y), correct / len(y)


@pytest.mark.parametrize(
    ("name", "batch_size", "rows"),
    [
        ("fedavg_cnn", 256, None),  # two passes of 128
        ("fedavg_cnn", 300, None),  # one batch of 300: three passes of 100
        ("lenet5", 64, None),  # one pass a batch
        ("lenet5", 70, 32),  # passes of 24, 23, 23 and, for the last 20 samples, 20
    ],
)
def test_evaluation_equals_a_plain_loop_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, name: str, batch_size: int, rows: int | None
) -> None:
    if rows is not None:
        monkeypatch.setattr(training, "FORWARD_ROWS", rows)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(300, 1, 28, 28, generator=g), torch.randint(0, 10, (300,), generator=g)
    model = build_model(name, (1, 28, 28), 10, seed=1)
    assert sum(isinstance(m, MaxPool2d) for m in model.modules()) == 2
    result = evaluate(model, ArrayDataset(x, y, 10), batch_size=batch_size)
    loss, accuracy = _plain_evaluation(model, x, y, batch_size)
    assert result.loss == loss
    assert result.accuracy == accuracy
    assert model.training  # evaluate() restores the mode
    assert np.isfinite(result.loss)


class _Centred(nn.Module):
    """Subtracts the batch mean: a sample's output depends on the other samples."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.passes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes.append(len(x))
        out: torch.Tensor = self.fc(x - x.mean(dim=0))
        return out


def test_a_model_that_mixes_samples_runs_whole_batches() -> None:
    model = _Centred()
    assert not per_sample(model)
    x, y = torch.randn(700, 4), torch.randint(0, 3, (700,))
    evaluate(model, ArrayDataset(x, y, 3), batch_size=300)
    assert model.passes == [300, 300, 100]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (build_model("resnet_small", (1, 28, 28), 10).eval(), True),
        (build_model("resnet_small", (1, 28, 28), 10).train(), False),  # batch statistics
        (nn.Sequential(nn.BatchNorm1d(4, track_running_stats=False)).eval(), False),
        (nn.Sequential(nn.Flatten(0), nn.Linear(8, 2)), False),
        (nn.Sequential(nn.Flatten(), nn.Linear(8, 2), nn.ReLU()), True),
    ],
)
def test_per_sample_knows_which_layers_keep_samples_apart(model: nn.Module, expected: bool) -> None:
    assert per_sample(model) is expected

"""The profiler: parameters, MACs, FLOPs and feature-map bytes against known figures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedge.learning.models import build_model, count_params
from fedge.learning.profiler import TRAIN_FACTOR, profile, profile_blocks

MNIST = (1, 28, 28)


def by_name(prof: object) -> dict:
    return {layer.name: layer for layer in prof.layers}  # type: ignore[attr-defined]


def test_fedavg_cnn_figures() -> None:
    prof = profile(build_model("fedavg_cnn", MNIST, 10), MNIST)
    layers = by_name(prof)
    assert prof.total_params == 1_663_370
    assert layers["conv1"].macs == 28 * 28 * 32 * 25
    assert layers["conv2"].macs == 14 * 14 * 64 * 32 * 25
    assert layers["fc1"].macs == 7 * 7 * 64 * 512 and layers["fc1"].params == 3136 * 512 + 512
    assert prof.total_macs == 12_273_152
    assert layers["conv1"].output_shape == (32, 28, 28)
    assert layers["conv1"].output_bytes == 32 * 28 * 28 * 4
    assert layers["flatten"].output_shape == (3136,) and layers["flatten"].macs == 0
    assert layers["relu1"].flops_forward == 32 * 28 * 28  # 1 FLOP per output element
    assert layers["pool1"].flops_forward == 32 * 14 * 14 * 4  # 2×2 window per output
    assert layers["conv1"].param_bytes == (32 * 25 + 32) * 4
    assert prof.input_bytes == 28 * 28 * 4


def test_resnet34_matches_published_figures() -> None:
    model = build_model("resnet34", (3, 224, 224), 1000)
    prof = profile(model, (3, 224, 224))
    assert prof.total_macs == pytest.approx(3.6e9, rel=0.05)
    assert prof.total_params == pytest.approx(21.8e6, rel=0.01)
    assert sum(layer.params for layer in prof.layers) == count_params(model)
    adds = [layer for layer in prof.layers if layer.kind == "ResidualAdd"]
    assert len(adds) == 16 and all(a.macs == 0 and a.flops_forward > 0 for a in adds)


def test_lenet5_count_matches_the_parameters() -> None:
    model = build_model("lenet5", MNIST, 10)
    prof = profile(model, MNIST)
    assert prof.total_params == sum(p.numel() for p in model.parameters()) == 61_706
    assert sum(layer.params for layer in prof.layers) == 61_706
    assert by_name(prof)["flatten"].output_shape == (400,)


def test_flops_conventions() -> None:
    prof = profile(build_model("resnet_small", MNIST, 10), MNIST)
    for layer in prof.layers:
        assert layer.flops_forward >= 2 * layer.macs
        assert layer.flops_train == pytest.approx(TRAIN_FACTOR * layer.flops_forward)
    assert prof.flops_forward == pytest.approx(sum(ly.flops_forward for ly in prof.layers))
    assert prof.flops_train == pytest.approx(3 * prof.flops_forward)


def test_grouped_and_transposed_convolutions() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False),
        nn.ConvTranspose2d(8, 2, 2, stride=2, bias=False),
    )
    first, second = profile(model, (4, 5, 5)).layers
    assert first.macs == 8 * 5 * 5 * (4 // 2) * 9
    assert second.macs == 8 * 5 * 5 * 2 * 4 and second.output_shape == (2, 10, 10)


def test_blocks_sum_to_the_leaves_and_give_cut_sizes() -> None:
    model = build_model("resnet_small", MNIST, 10)
    leaves, blocks = profile(model, MNIST), profile_blocks(model, MNIST)
    assert [b.name for b in blocks.layers] == [name for name, _ in model.named_children()]
    assert blocks.total_macs == leaves.total_macs
    assert blocks.flops_forward == pytest.approx(leaves.flops_forward)
    assert sum(b.params for b in blocks.layers) == count_params(model)
    cut = by_name(blocks)["layer2_0"]
    assert cut.kind == "BasicBlock" and cut.output_shape == (32, 14, 14)
    assert cut.output_bytes == 32 * 14 * 14 * 4


def test_profiling_leaves_the_model_as_it_was() -> None:
    model = build_model("resnet_small", MNIST, 10)
    model.train()
    model.bn1.eval()  # type: ignore[union-attr]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile(model, MNIST)
    profile_blocks(model, MNIST)
    assert model.training and not model.bn1.training  # type: ignore[union-attr]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_table_lists_every_layer() -> None:
    prof = profile_blocks(build_model("lenet5", MNIST, 10), MNIST)
    text = prof.table()
    assert len(text.splitlines()) == len(prof.layers) + 2 and "61,706" in text

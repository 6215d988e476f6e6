"""Layers of the reference models that compute PyTorch's values faster where they can, and
which models map every sample on its own (so that evaluation may split a batch).

``MaxPool2d`` is ``nn.MaxPool2d`` with a faster forward for inference. PyTorch's CPU max
pooling always computes the argmax indices beside the maxima (the backward pass needs them)
and does so one window at a time; on the FedAvg CNN's evaluation it took as long as both
convolutions. Without an autograd graph to record, the maxima of non-overlapping windows
are element-wise maxima of strided views of the input (``torch.maximum``, vectorised), which
pick the same values: a maximum is one of its inputs, whatever the order it is taken in, and
a NaN in a window gives NaN either way. The only freedom left is the sign of a zero maximum
when a window holds both +0 and -0, which compare equal.
"""

from __future__ import annotations

import torch
from torch import nn

from fedge.learning.resnet import BasicBlock, ResidualAdd, SequentialNet


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


def tiled_max_pool2d(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Maxima of the non-overlapping ``kh`` × ``kw`` windows of a contiguous N×C×H×W (or
    C×H×W) tensor whose H and W are multiples of ``kh`` and ``kw``: ``F.max_pool2d(x, (kh,
    kw))``'s values, as running element-wise maxima over the rows, then the columns, of
    each window."""
    *lead, h, w = x.shape
    rows = x.reshape(*lead, h // kh, kh, w)
    out = rows[..., 0, :]
    for i in range(1, kh):
        out = torch.maximum(out, rows[..., i, :])
    cols = out.reshape(*lead, h // kh, w // kw, kw)
    out = cols[..., 0]
    for j in range(1, kw):
        out = torch.maximum(out, cols[..., j])
    return out


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose inference forward, for non-overlapping windows that tile the
    input, is ``tiled_max_pool2d`` (the same values, several times faster on CPU).

    The fast path applies when no gradient is recorded (evaluation under ``no_grad`` or
    ``inference_mode``, or an input that needs none), the stride equals the kernel, there
    is no padding, dilation or ceil mode, no indices are asked for, and the CPU input is a
    contiguous floating tensor whose height and width are multiples of the kernel.
    Everything else, training included, runs PyTorch's pooling unchanged (its backward
    sends the gradient to the first maximum of a window, which this path does not record).
    """

    def _tiles(self, x: torch.Tensor) -> tuple[int, int] | None:
        kernel = _pair(self.kernel_size)
        stride = _pair(self.stride) if self.stride else kernel
        plain = (
            stride == kernel
            and _pair(self.padding) == (0, 0)
            and _pair(self.dilation) == (1, 1)
            and not self.ceil_mode
            and not self.return_indices
        )
        if not plain or len(kernel) != 2 or min(kernel) < 1 or x.ndim not in (3, 4):
            return None
        if x.device.type != "cpu" or not x.is_floating_point() or not x.is_contiguous():
            return None
        kh, kw = kernel
        if x.shape[-2] % kh or x.shape[-1] % kw:
            return None
        return kh, kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():  # training: checked first, cheaply
            out: torch.Tensor = super().forward(x)
            return out
        tiles = self._tiles(x)
        if tiles is None:
            out = super().forward(x)
            return out
        return tiled_max_pool2d(x, *tiles)


_PER_SAMPLE: tuple[type[nn.Module], ...] = (
    SequentialNet,
    nn.Sequential,
    BasicBlock,
    ResidualAdd,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.MaxPool1d,
    nn.MaxPool2d,
    MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
)
"""Module types (exactly these, not subclasses, which may define another forward) whose
output for a sample depends on that sample alone, in eval mode."""

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _module_per_sample(m: nn.Module) -> bool:
    if type(m) in _PER_SAMPLE:
        return True
    if type(m) is nn.Flatten:
        return m.start_dim >= 1  # flattening from dim 0 would merge the samples
    if type(m) in _BATCH_NORMS:  # in eval mode with running statistics: a fixed affine map
        return not m.training and bool(m.track_running_stats) and m.running_mean is not None
    return False


def per_sample(model: nn.Module) -> bool:
    """Whether ``model``, as it is now (eval mode for batch norm), computes each sample's
    output from that sample alone: every module is of a known per-sample type. A model with
    any other module (a user's own, whose forward may mix samples) is not."""
    return all(_module_per_sample(m) for m in model.modules())

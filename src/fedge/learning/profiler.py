"""Per-layer cost of a model: parameters, MACs, FLOPs and feature-map bytes, per sample.

Conventions (what the system model, TMOA and split learning rely on):

* ``macs`` are multiply-accumulates of convolutions (groups and transposed included), linear
  layers and normalisation layers (one per element: the eval-mode affine); bias additions
  are not counted.
* ``flops_forward = 2·macs + elementwise`` where the elementwise part counts 1 FLOP per
  output element of activations and residual additions, k FLOPs per output of a pooling
  window of k elements, and 1 per input element of adaptive pooling.
* ``flops_train = 3·flops_forward``: the backward pass costs about twice the forward one
  (gradients with respect to the inputs and to the weights).
* ``output_bytes`` is the size of the layer's output feature map for one sample, at the
  model's dtype (4 bytes per float32 element): what a split at that layer sends.

The model runs once on a zero batch of one sample, in eval mode and under ``no_grad``; the
train/eval modes of all submodules are restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedge.learning.resnet import ResidualAdd

TRAIN_FACTOR = 3.0
_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
_ADAPTIVE = (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
    nn.Softmax,
    nn.LogSoftmax,
    ResidualAdd,
)


@dataclass(frozen=True)
class LayerProfile:
    """Cost of one layer (or block) for one sample; see the module docstring."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    flops_forward: float
    flops_train: float
    output_bytes: int
    param_bytes: int


@dataclass(frozen=True)
class ModelProfile:
    """Per-layer profiles in execution order and per-sample totals."""

    layers: tuple[LayerProfile, ...]
    input_shape: tuple[int, ...]
    total_params: int
    total_macs: int
    flops_forward: float
    flops_train: float
    input_bytes: int = 0

    @property
    def param_bytes(self) -> int:
        return sum(layer.param_bytes for layer in self.layers)

    def table(self) -> str:
        """A plain-text table: one row per layer, then the totals."""
        rows = [f"{'layer':<28}{'kind':<18}{'output':<18}{'params':>12}{'MACs':>16}{'out B':>12}"]
        for ly in self.layers:
            shape = "×".join(map(str, ly.output_shape))
            rows.append(
                f"{ly.name[:27]:<28}{ly.kind[:17]:<18}{shape:<18}{ly.params:>12,}"
                f"{ly.macs:>16,}{ly.output_bytes:>12,}"
            )
        rows.append(f"{'total':<64}{self.total_params:>12,}{self.total_macs:>16,}")
        return "\n".join(rows)


def _prod(values: Any, dims: int) -> int:
    if isinstance(values, int):
        return math.prod([int(values)] * dims)
    return math.prod(int(v) for v in values)


def _conv_macs(m: nn.modules.conv._ConvNd, inp: torch.Tensor, out: torch.Tensor) -> int:
    kernel = math.prod(m.kernel_size)
    if m.transposed:
        return inp.numel() * (m.out_channels // m.groups) * kernel
    return out.numel() * (m.in_channels // m.groups) * kernel


def layer_cost(module: nn.Module, inp: torch.Tensor | None, out: torch.Tensor) -> tuple[int, int]:
    """(MACs, elementwise FLOPs) of one call of a leaf module on a batch of one."""
    if isinstance(module, nn.modules.conv._ConvNd) and inp is not None:
        return _conv_macs(module, inp, out), 0
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features, 0
    if isinstance(module, _NORMS):
        return out.numel(), 0
    if isinstance(module, _POOLS):
        return 0, out.numel() * _prod(module.kernel_size, max(out.ndim - 2, 1))
    if isinstance(module, _ADAPTIVE) and inp is not None:
        return 0, inp.numel()
    if isinstance(module, _ELEMENTWISE):
        return 0, out.numel()
    return 0, 0


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


@dataclass
class _Call:
    name: str
    module: nn.Module
    inp: torch.Tensor | None
    out: torch.Tensor
    is_leaf: bool
    is_block: bool


def _targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules, plus any module holding parameters of its own."""
    return [
        (name or type(m).__name__, m)
        for name, m in model.named_modules()
        if next(m.children(), None) is None or next(m.parameters(recurse=False), None) is not None
    ]


def _run(
    model: nn.Module, input_shape: tuple[int, ...], blocks: list[tuple[str, nn.Module]]
) -> tuple[list[_Call], int]:
    """Run one zero sample through ``model``, recording every call of a leaf or block."""
    calls: list[_Call] = []
    leaf_ids = {id(m) for _, m in _targets(model)}
    block_ids = {id(m) for _, m in blocks}
    watch = {id(m): (name, m) for name, m in [*blocks, *_targets(model)]}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            t = _first_tensor(out)
            if t is not None:
                calls.append(
                    _Call(
                        name,
                        m,
                        _first_tensor(args),
                        t.detach(),
                        id(m) in leaf_ids,
                        id(m) in block_ids,
                    )
                )

        return hook

    x = _zero_sample(model, input_shape)
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook_for(name)) for name, m in watch.values()]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return calls, x.element_size()


def _zero_sample(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A zero batch of one, with the dtype and device of the model's first float parameter."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None:
        return torch.zeros((1, *input_shape))
    return torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device)


def _layer(call: _Call, first: bool, macs: int, extra: int) -> LayerProfile:
    params = list(call.module.parameters(recurse=False)) if first else []
    forward = 2.0 * macs + extra
    return LayerProfile(
        name=call.name,
        kind=type(call.module).__name__,
        output_shape=tuple(call.out.shape[1:]),
        params=sum(p.numel() for p in params),
        macs=macs,
        flops_forward=forward,
        flops_train=TRAIN_FACTOR * forward,
        output_bytes=call.out[0].numel() * call.out.element_size(),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
    )


def _leaf_layers(calls: list[_Call]) -> list[tuple[_Call, LayerProfile | None]]:
    """Each call with its leaf profile (None for a block that is not a leaf)."""
    seen: set[int] = set()
    out: list[tuple[_Call, LayerProfile | None]] = []
    for call in calls:
        layer = None
        if call.is_leaf:
            macs, extra = layer_cost(call.module, call.inp, call.out)
            layer = _layer(call, id(call.module) not in seen, macs, extra)
            seen.add(id(call.module))
        out.append((call, layer))
    return out


def _summary(
    model: nn.Module, layers: list[LayerProfile], shape: tuple[int, ...], elem: int
) -> ModelProfile:
    forward = sum(ly.flops_forward for ly in layers)
    return ModelProfile(
        layers=tuple(layers),
        input_shape=shape,
        total_params=sum(p.numel() for p in model.parameters()),
        total_macs=sum(ly.macs for ly in layers),
        flops_forward=forward,
        flops_train=TRAIN_FACTOR * forward,
        input_bytes=math.prod(shape) * elem,
    )


def profile(model: nn.Module, input_shape: tuple[int, ...]) -> ModelProfile:
    """Per-leaf-layer profile of ``model`` for one sample of ``input_shape`` (no batch axis)."""
    shape = tuple(int(s) for s in input_shape)
    calls, elem = _run(model, shape, [])
    layers = [ly for _, ly in _leaf_layers(calls) if ly is not None]
    return _summary(model, layers, shape, elem)


def profile_blocks(model: nn.Module, input_shape: tuple[int, ...]) -> ModelProfile:
    """Profile at the granularity of the model's top-level children (split cut points).

    A block's figures are the sums over the leaf calls inside it; its output shape and
    bytes are those of the block's own output.
    """
    shape = tuple(int(s) for s in input_shape)
    calls, elem = _run(model, shape, list(model.named_children()))
    blocks: list[LayerProfile] = []
    pending: list[LayerProfile] = []
    for call, leaf in _leaf_layers(calls):  # a block's hook fires after its leaves' hooks
        if leaf is not None:
            pending.append(leaf)
        if call.is_block:
            inside = [ly.name == call.name or ly.name.startswith(call.name + ".") for ly in pending]
            blocks.append(_block(call, [ly for ly, i in zip(pending, inside, strict=True) if i]))
            pending = [ly for ly, i in zip(pending, inside, strict=True) if not i]
    return _summary(model, blocks + pending, shape, elem)


def _block(call: _Call, leaves: list[LayerProfile]) -> LayerProfile:
    forward = sum(ly.flops_forward for ly in leaves)
    return LayerProfile(
        name=call.name,
        kind=type(call.module).__name__,
        output_shape=tuple(call.out.shape[1:]),
        params=sum(ly.params for ly in leaves),
        macs=sum(ly.macs for ly in leaves),
        flops_forward=forward,
        flops_train=TRAIN_FACTOR * forward,
        output_bytes=call.out[0].numel() * call.out.element_size(),
        param_bytes=sum(ly.param_bytes for ly in leaves),
    )

"""Reference models and ``build_model``: a registered name or a user module by import path.

Every reference model is a ``SequentialNet``: its top-level children, applied in order,
compute the forward pass (flattening is an ``nn.Flatten`` module), so ``blocks(model)`` lists
the cut points for split learning and the profiler can report per block.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from fedge.core.errors import ConfigError, FedgeError
from fedge.core.registry import Registry, resolve_import_path
from fedge.learning._params import accepted_kwargs, check_params
from fedge.learning.layers import MaxPool2d
from fedge.learning.resnet import SequentialNet, cifar_resnet, resnet34_net

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


def _image_shape(input_shape: Sequence[int], model: str, min_hw: int = 1) -> tuple[int, int, int]:
    if len(input_shape) != 3 or min(input_shape[1:]) < min_hw:
        raise ConfigError(
            "input_shape", tuple(input_shape), f"C×H×W images with H, W >= {min_hw} for {model}"
        )
    c, h, w = input_shape
    return c, h, w


@MODELS.register("mlp")
def mlp(
    input_shape: Sequence[int], n_classes: int, hidden: Sequence[int] = (200, 200)
) -> SequentialNet:
    """Multilayer perceptron: flatten, then ``hidden`` ReLU layers (default 2 × 200)."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    width = math.prod(input_shape)
    for i, h in enumerate(hidden, 1):
        layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU())]
        width = h
    layers.append((f"fc{len(hidden) + 1}", nn.Linear(width, n_classes)))
    return SequentialNet(OrderedDict(layers))


@MODELS.register("logistic")
def logistic(input_shape: Sequence[int], n_classes: int) -> nn.Module:
    """Multinomial logistic regression (flatten, one linear layer; softmax in the loss): the
    model FedProx and LEAF train on Synthetic(alpha, beta)."""
    return mlp(input_shape, n_classes, hidden=())


@MODELS.register("fedavg_cnn")
def fedavg_cnn(input_shape: Sequence[int], n_classes: int) -> SequentialNet:
    """The CNN of McMahan et al. 2017: two 5×5 'same' convs (32, 64) with 2×2 max pooling,
    a 512-unit ReLU layer and a linear classifier (1,663,370 parameters on 1×28×28)."""
    c, h, w = _image_shape(input_shape, "fedavg_cnn", min_hw=4)
    return SequentialNet(
        OrderedDict(
            conv1=nn.Conv2d(c, 32, 5, padding=2),
            relu1=nn.ReLU(),
            pool1=MaxPool2d(2),
            conv2=nn.Conv2d(32, 64, 5, padding=2),
            relu2=nn.ReLU(),
            pool2=MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64 * (h // 4) * (w // 4), 512),
            relu3=nn.ReLU(),
            fc2=nn.Linear(512, n_classes),
        )
    )


def _conv_pool(size: int, padding: int) -> int:
    """Spatial size after a 5×5 convolution with ``padding`` then a 2×2 max pool."""
    return (size + 2 * padding - 4) // 2


@MODELS.register("lenet5")
def lenet5(input_shape: Sequence[int], n_classes: int) -> SequentialNet:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling: conv 6, conv 16, fc 120-84.

    Inputs smaller than 32×32 get padding 2 on conv1 (the usual 28×28 MNIST setting: 61,706
    parameters); inputs whose conv2 would see less than 10×10 get padding 2 there too.
    """
    c, h, w = _image_shape(input_shape, "lenet5", min_hw=4)
    pad1 = 2 if min(h, w) < 32 else 0
    h1, w1 = _conv_pool(h, pad1), _conv_pool(w, pad1)
    pad2 = 0 if min(h1, w1) >= 10 else 2
    h2, w2 = _conv_pool(h1, pad2), _conv_pool(w1, pad2)
    if min(h2, w2) < 1:
        raise ConfigError("input_shape", tuple(input_shape), "images of at least 4×4 for lenet5")
    return SequentialNet(
        OrderedDict(
            conv1=nn.Conv2d(c, 6, 5, padding=pad1),
            relu1=nn.ReLU(),
            pool1=MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, 5, padding=pad2),
            relu2=nn.ReLU(),
            pool2=MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16 * h2 * w2, 120),
            relu3=nn.ReLU(),
            fc2=nn.Linear(120, 84),
            relu4=nn.ReLU(),
            fc3=nn.Linear(84, n_classes),
        )
    )


@MODELS.register("resnet_small")
def resnet_small(
    input_shape: Sequence[int], n_classes: int, blocks_per_stage: int = 1
) -> SequentialNet:
    """CIFAR-style ResNet-8 for 28×28 inputs (stages of 16/32/64 channels, ~78 k params)."""
    c, _, _ = _image_shape(input_shape, "resnet_small", min_hw=4)
    if blocks_per_stage < 1:
        raise ConfigError("blocks_per_stage", blocks_per_stage, "an integer >= 1")
    return cifar_resnet(c, n_classes, blocks_per_stage)


@MODELS.register("resnet20")
def resnet20(input_shape: Sequence[int], n_classes: int) -> SequentialNet:
    """CIFAR-style ResNet-20 (three BasicBlocks per stage, ~0.27 M params)."""
    c, _, _ = _image_shape(input_shape, "resnet20", min_hw=4)
    return cifar_resnet(c, n_classes, blocks_per_stage=3)


@MODELS.register("resnet34")
def resnet34(input_shape: Sequence[int], n_classes: int) -> SequentialNet:
    """ImageNet ResNet-34 (21.8 M params, ~3.6 GMACs at 3×224×224), for profiling and splits."""
    c, _, _ = _image_shape(input_shape, "resnet34", min_hw=32)
    return resnet34_net(c, n_classes)


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed weight initialisation without touching the caller's global torch RNG state."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check_shape(input_shape: Sequence[int], n_classes: int) -> tuple[int, ...]:
    try:
        shape = tuple(operator.index(s) for s in input_shape)
    except TypeError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigError("input_shape", input_shape, "a non-empty tuple of positive integers")
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ConfigError("n_classes", n_classes, "an integer >= 2")
    return shape


def build_model(
    name: str, input_shape: Sequence[int], n_classes: int, seed: int | None = 0, **params: Any
) -> nn.Module:
    """A registered model, or ``"package.module:Attr"`` (a user nn.Module class or factory).

    Weights are initialised from ``seed`` (the global torch RNG is left as it was); pass
    ``seed=None`` to draw from the global RNG instead. ``params`` go to the factory.
    """
    shape = _check_shape(input_shape, n_classes)
    if ":" in name:
        with _seeded(seed):
            return _from_import_path(name, shape, n_classes, params)
    if name not in MODELS:
        allowed = "one of " + ", ".join(MODELS.names()) + ", or an import path 'pkg.module:Attr'"
        raise ConfigError("model", name, allowed)
    factory = MODELS.get(name, "model")
    check_params(f"model {name!r}", factory, params, reserved=("input_shape", "n_classes"))
    with _seeded(seed):
        return factory(shape, n_classes, **params)


def _resolve(path: str) -> Any:
    obj = resolve_import_path(path, "model")
    if not callable(obj):
        raise ConfigError("model", path, "an nn.Module class or a factory returning one")
    return obj


def _from_import_path(
    path: str, shape: tuple[int, ...], n_classes: int, params: dict[str, Any]
) -> nn.Module:
    factory = _resolve(path)
    check_params(f"model {path!r}", factory, params, reserved=("input_shape", "n_classes"))
    kwargs = accepted_kwargs(factory, {"input_shape": shape, "n_classes": n_classes})
    try:
        model = factory(**kwargs, **params)
    except Exception as exc:
        raise FedgeError(f"model {path!r}: building it failed: {exc!r}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError("model", path, f"a factory returning an nn.Module, not {type(model)}")
    return model


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's top-level blocks in forward order (its ``layers()``, or a Sequential's)."""
    layers = getattr(model, "layers", None)
    if callable(layers):
        return list(layers())
    if isinstance(model, nn.Sequential):
        return list(model)
    raise ConfigError(
        "model", type(model).__name__, "an nn.Sequential or a module with a layers() method"
    )


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

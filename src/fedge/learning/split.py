"""Cut a model at block j into an edge head and a cloud tail, and early-exit heads.

The cut points are the model's top-level blocks (``blocks(model)``, the granularity of
``profile_blocks`` and TMOA): cut ``j`` puts blocks 1..j on the edge and the rest on the
cloud. ``j = 0`` is the cloud-only baseline (the head is empty and the edge sends the raw
input). The parts are views: they hold the *same* module objects as the model, so training
a part trains the model, and the parts' state keys are the model's own keys.

U-shaped split learning (labels never leave the edge) keeps the model's last block on the
edge too: the edge runs blocks 1..j and block n, the cloud runs blocks j+1..n-1.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedge.core.errors import ConfigError
from fedge.core.update import ModelState
from fedge.learning.models import blocks

EXIT_PREFIX = "exit."
"""State keys of the early-exit head inside an edge state."""


def _named_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    return [(str(i), b) for i, b in enumerate(blocks(model))]


def _part(named: Sequence[tuple[str, nn.Module]]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(named))


def check_cut(cut: int, n_blocks: int, ushaped: bool = False) -> None:
    """Cut ``j`` must leave at least one block on the cloud (``split.cut``)."""
    top = n_blocks - 2 if ushaped else n_blocks - 1
    if not 0 <= cut <= top:
        what = "U-shaped split of " if ushaped else ""
        raise ConfigError(
            "split.cut",
            cut,
            f"an integer in 0..{top} for the {what}{n_blocks}-block model "
            "(0: cloud-only, the edge sends the raw input)",
        )


def split_model(model: nn.Module, cut: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(head = blocks 1..cut, tail = the rest), sharing the model's modules."""
    named = _named_blocks(model)
    check_cut(cut, len(named))
    return _part(named[:cut]), _part(named[cut:])


def split_ushaped(model: nn.Module, cut: int) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    """(edge head = blocks 1..cut, cloud body = blocks cut+1..n-1, edge last block n)."""
    named = _named_blocks(model)
    check_cut(cut, len(named), ushaped=True)
    return _part(named[:cut]), _part(named[cut:-1]), _part(named[-1:])


def exit_head(
    feature_shape: Sequence[int], n_classes: int, pool: int = 4, seed: int | None = None
) -> nn.Sequential:
    """An early-exit classifier on a cut feature map (BranchyNet-style, kept small).

    C×H×W maps are average-pooled to at most ``pool``×``pool`` then classified by one linear
    layer; flat features go straight to the linear layer. ``seed`` seeds its initialisation
    (without touching the global torch RNG); None draws from the global RNG.
    """
    shape = tuple(int(s) for s in feature_shape)
    layers: list[tuple[str, nn.Module]] = []
    width = 1
    for s in shape:
        width *= s
    if len(shape) == 3:
        c, h, w = shape
        size = (min(pool, h), min(pool, w))
        layers.append(("pool", nn.AdaptiveAvgPool2d(size)))
        width = c * size[0] * size[1]
    if seed is None:
        fc = nn.Linear(width, n_classes)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fc = nn.Linear(width, n_classes)
    layers += [("flatten", nn.Flatten()), ("fc", fc)]
    return nn.Sequential(OrderedDict(layers))


def feature_shape(head: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of the head's output for one sample (no batch axis)."""
    with torch.no_grad():
        was = head.training
        head.eval()
        out = head(torch.zeros(1, *input_shape))
        head.train(was)
    return tuple(out.shape[1:])


@dataclass
class SplitModel:
    """A model cut for split learning: edge parts (head, optional last block, exit head)
    and the cloud part (tail), all sharing modules with ``full``."""

    full: nn.Module
    head: nn.Sequential
    tail: nn.Sequential
    exit: nn.Sequential
    last: nn.Sequential | None = None
    """U-shaped only: the model's last block, kept on the edge."""

    @staticmethod
    def build(
        model: nn.Module,
        cut: int,
        input_shape: Sequence[int],
        n_classes: int,
        ushaped: bool = False,
    ) -> SplitModel:
        last: nn.Sequential | None = None
        if ushaped:
            head, tail, last = split_ushaped(model, cut)
        else:
            head, tail = split_model(model, cut)
        shape = feature_shape(head, input_shape)
        return SplitModel(model, head, tail, exit_head(shape, n_classes), last)

    def edge_modules(self) -> list[nn.Module]:
        parts: list[nn.Module] = [self.head, self.exit]
        return parts if self.last is None else [*parts, self.last]

    def edge_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.edge_modules() for p in m.parameters()]

    def edge_state(self) -> ModelState:
        """Head (and last block) under the model's keys, the exit head under ``exit.``."""
        out = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
        if self.last is not None:
            out.update({k: v.detach().clone() for k, v in self.last.state_dict().items()})
        out.update({EXIT_PREFIX + k: v.detach().clone() for k, v in self.exit.state_dict().items()})
        return out

    def load_edge_state(self, state: Mapping[str, torch.Tensor]) -> None:
        exit_part = {
            k[len(EXIT_PREFIX) :]: v for k, v in state.items() if k.startswith(EXIT_PREFIX)
        }
        rest = {k: v for k, v in state.items() if not k.startswith(EXIT_PREFIX)}
        self.exit.load_state_dict(exit_part, strict=True)
        head_keys = set(self.head.state_dict())
        self.head.load_state_dict({k: v for k, v in rest.items() if k in head_keys}, strict=True)
        if self.last is not None:
            self.last.load_state_dict(
                {k: v for k, v in rest.items() if k not in head_keys}, strict=True
            )

    def edge_model(self) -> nn.Sequential:
        """Head then exit head: what the edge answers with while the cloud is dormant."""
        return nn.Sequential(self.head, self.exit)

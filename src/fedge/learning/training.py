"""Local training and evaluation: a plain PyTorch loop over in-memory tensors.

Minibatches come from ``torch.randperm(len(data), generator=generator)`` once per epoch and
index the tensors directly (no DataLoader), so a run is a function of the model, the data,
the config and the generator's seed. Models with dropout draw from torch's global RNG;
the reference models have none.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fedge.core.errors import ConfigError
from fedge.core.settings import Section
from fedge.core.update import ModelState, Work
from fedge.learning.data import ArrayDataset
from fedge.learning.layers import per_sample
from fedge.learning.metrics import classification_metrics

OPTIMIZERS = ("sgd", "adam")


class TrainConfig(Section):
    """Local training (``[training]``); ``steps > 0`` runs exactly that many minibatches
    (epochs unused). ``proximal_mu > 0`` adds FedProx's mu/2·||w − w_global||² to the
    objective."""

    section: ClassVar[str] = "training"

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(1, ge=1)
    steps: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    proximal_mu: float = Field(0.0, ge=0)


@dataclass(frozen=True)
class TrainResult:
    """What one local training call did: samples processed, optimizer steps, mean loss."""

    samples: int
    steps: int
    loss: float

    def work(self, flops_train_per_sample: float) -> Work:
        """The Work for the cost model, given the profiler's ``flops_train`` per sample."""
        return Work(self.samples, self.samples * flops_train_per_sample)


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """A fresh optimizer for ``cfg`` (SGD with momentum and weight decay, or Adam)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _epoch(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=generator, device=generator.device)
    return (perm[start : start + batch_size] for start in range(0, n, batch_size))


def minibatches(n: int, cfg: TrainConfig, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index tensors of the minibatches: ``epochs`` passes, or exactly ``steps`` batches."""
    if cfg.steps > 0:
        endless = itertools.chain.from_iterable(
            _epoch(n, cfg.batch_size, generator) for _ in itertools.count()
        )
        return itertools.islice(endless, cfg.steps)
    return itertools.chain.from_iterable(
        _epoch(n, cfg.batch_size, generator) for _ in range(cfg.epochs)
    )


def _anchors(
    model: nn.Module, global_params: Mapping[str, torch.Tensor] | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, its global value) pairs for the proximal term."""
    if global_params is None:
        raise ConfigError("global_params", None, "the global model's parameters when mu > 0")
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    missing = [k for k, _ in named if k not in global_params]
    if missing:
        raise ConfigError("global_params", f"missing {missing[:5]}", "every trainable parameter")
    return [(p, global_params[k].detach().to(p.device, p.dtype)) for k, p in named]


def _add_proximal_grad(anchors: list[tuple[torch.Tensor, torch.Tensor]], mu: float) -> None:
    """grad += mu·(w − w_global): the gradient of mu/2·||w − w_global||², added directly."""
    with torch.no_grad():
        for p, g in anchors:
            if p.grad is None:
                p.grad = mu * (p - g)
            else:
                p.grad.add_(p - g, alpha=mu)


class StepHook(Protocol):
    """Extra terms of a local objective, applied around every optimizer step.

    ``before_step`` runs after the loss gradient is in ``.grad`` (add a regulariser's
    gradient there); ``after_step`` runs after the update (e.g. re-apply a pruning mask).
    """

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def local_train(
    model: nn.Module,
    data: ArrayDataset,
    cfg: TrainConfig,
    generator: torch.Generator,
    global_params: Mapping[str, torch.Tensor] | None = None,
    hooks: Sequence[StepHook] = (),
) -> TrainResult:
    """Train ``model`` in place from its current weights; a fresh optimizer each call.

    The reported loss is the mean cross-entropy over the samples processed (without the
    proximal term or the hooks' terms). An empty dataset trains nothing and reports loss 0.
    """
    anchors = _anchors(model, global_params) if cfg.proximal_mu > 0 else []
    if len(data) == 0:
        return TrainResult(0, 0, 0.0)
    device = _device(model)
    x, y = data.x.to(device), data.y.to(device)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    model.train()
    losses: list[torch.Tensor] = []
    sizes: list[int] = []
    for idx in minibatches(len(data), cfg, generator):
        idx = idx.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        if anchors:
            _add_proximal_grad(anchors, cfg.proximal_mu)
        for hook in hooks:
            hook.before_step()
        opt.step()
        for hook in hooks:
            hook.after_step()
        losses.append(loss.detach())
        sizes.append(len(idx))
    samples = sum(sizes)
    weights = torch.tensor(sizes, dtype=losses[0].dtype, device=device)
    return TrainResult(samples, len(sizes), float(torch.stack(losses) @ weights) / samples)


@dataclass(frozen=True)
class EvalResult:
    """Loss, accuracy and macro precision / recall / F1 on ``n`` samples (see metrics.py)."""

    loss: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    n: int
    confusion: np.ndarray = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, float]:
        """The scalar figures (everything but the confusion matrix)."""
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "n": float(self.n),
        }


FORWARD_ROWS = 128
"""Most samples a forward pass of ``predict`` takes at once from a per-sample model."""


def _forward(model: nn.Module, xb: torch.Tensor, rows: int) -> torch.Tensor:
    """``model(xb)``, in passes of at most ``rows`` samples of near-equal size."""
    if len(xb) <= rows:
        out: torch.Tensor = model(xb)
        return out
    parts = -(-len(xb) // rows)
    return torch.cat([model(part) for part in torch.tensor_split(xb, parts)])


def predict(model: nn.Module, data: ArrayDataset, batch_size: int = 1000) -> tuple[float, Any]:
    """(summed cross-entropy, predicted classes) in eval mode under no_grad; modes restored.

    The loss is each batch of ``batch_size`` samples' float32 sum, added up in a Python
    float, so it depends on ``batch_size``. A model whose every layer maps each sample on
    its own (``layers.per_sample``: the reference models) runs a batch in forward passes of
    at most ``FORWARD_ROWS`` samples: the same logits (the tests check them bit for bit
    against whole-batch passes, and the quickstart's metrics are unchanged), without the
    large activations of a 256-sample pass, which the allocator maps fresh from the OS
    and faults in page by page each batch (a third of the evaluation's time before).
    """
    device = _device(model)
    modes = {m: m.training for m in model.modules()}
    loss_sum, preds = 0.0, []
    model.eval()
    try:
        rows = FORWARD_ROWS if per_sample(model) else batch_size
        with torch.no_grad():
            x, y = data.x, data.y  # read once: an index view gathers on each read
            for start in range(0, len(data), batch_size):
                xb = x[start : start + batch_size].to(device)
                yb = y[start : start + batch_size].to(device)
                out = _forward(model, xb, rows)
                loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
                preds.append(out.argmax(dim=1).cpu())
    finally:
        for m, mode in modes.items():
            m.training = mode
    return loss_sum, torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)


def evaluate(model: nn.Module, data: ArrayDataset, batch_size: int = 1000) -> EvalResult:
    """Loss, accuracy, macro precision / recall / F1 and the confusion matrix on ``data``."""
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "an integer >= 1")
    loss_sum, preds = predict(model, data, batch_size)
    m = classification_metrics(data.labels, preds, data.n_classes)
    n = len(data)
    return EvalResult(
        loss=loss_sum / n if n else 0.0,
        accuracy=m["accuracy"],
        precision=m["precision"],
        recall=m["recall"],
        f1=m["f1"],
        n=n,
        confusion=m["confusion"],
    )


def state_of(model: nn.Module) -> ModelState:
    """Detached clones of the model's state_dict (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model in place; keys and shapes must match exactly."""
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()
        raise ConfigError(
            "state",
            " ".join(line.strip() for line in detail[:4]),
            "exactly the model's parameter and buffer names with matching shapes",
        ) from exc

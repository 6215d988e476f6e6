"""Node apps shared by the algorithms: a device that trains locally on its own data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedge.core.message import Message
from fedge.core.node import Handler, NodeApp, NodeContext
from fedge.core.update import Update, Work
from fedge.learning import (
    ArrayDataset,
    TrainConfig,
    evaluate,
    load_state,
    local_train,
    state_of,
)
from fedge.learning.profiler import TRAIN_FACTOR


@dataclass
class LocalTrainer:
    """Trains a (shared, reused) model on one device's data, starting from a received state.

    The model object is shared by every device app of a process: each delivery loads the
    received state into it first, so devices never see each other's weights.
    """

    model: nn.Module
    data: ArrayDataset
    config: TrainConfig
    flops_per_sample: float

    def train(self, message: Message, ctx: NodeContext) -> Message:
        start = message.payload["model"].state
        load_state(self.model, start)
        overrides = message.payload.get("train", {})
        cfg = _override(self.config, overrides)
        gen = torch.Generator().manual_seed(int(ctx.rng.integers(2**62)))
        glob = start if cfg.proximal_mu > 0 else None
        result = local_train(self.model, self.data, cfg, gen, global_params=glob)
        work = Work(result.samples, result.samples * self.flops_per_sample)
        ctx.add_work(work)
        update = Update(
            state=state_of(self.model),
            weight=float(len(self.data)),
            metrics={"train_loss": result.loss, "steps": float(result.steps)},
            work=work,
            origin=ctx.node_id,
            round=message.round,
        )
        return message.reply("update", {"update": update})

    def loss(self, message: Message, ctx: NodeContext) -> Message:
        """This device's mean loss on all its data under the received model (what
        power-of-choice selection ranks devices by); changes nothing on the device.

        Interpretation: an evaluation is a forward pass per example, so its FLOPs are the
        training FLOPs per example divided by the profiler's ``TRAIN_FACTOR`` (3).
        """
        load_state(self.model, message.payload["model"].state)
        n = len(self.data)
        loss = evaluate(self.model, self.data).loss if n else 0.0
        ctx.add_work(Work(n, n * self.flops_per_sample / TRAIN_FACTOR))
        return message.reply("loss", {"loss": loss, "examples": float(n)})


def _override(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Apply per-message training settings; ``local_rounds`` multiplies epochs (or steps)."""
    changes = dict(overrides)
    rounds = int(changes.pop("local_rounds", 1))
    cfg = cfg.model_copy(update=changes) if changes else cfg
    if rounds == 1:
        return cfg
    if cfg.steps > 0:
        return cfg.model_copy(update={"steps": cfg.steps * rounds})
    return cfg.model_copy(update={"epochs": cfg.epochs * rounds})


def trainer_app(node_id: str, trainer: LocalTrainer, tier: str = "device") -> NodeApp:
    """A device app answering ``train`` with an ``update`` and ``loss`` with its local loss;
    both are portable (pure functions of the message and the device's data), so the Ray
    engine may run them remotely."""
    handlers: dict[str, Handler] = {"train": trainer.train, "loss": trainer.loss}
    return NodeApp(node_id, tier, handlers, portable=frozenset(handlers))

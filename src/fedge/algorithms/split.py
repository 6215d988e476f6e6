"""Split and collaborative cloud-edge training (SPEC §3F; seeds 000 and 004).

The model is cut at block j (``fedge.learning.split``). The *edges* are the split clients:
each trains on the samples of the devices attached to it at t = 0, which were uploaded to
their edge beforehand (that upload is not charged: it is the same for every variant and
for the cloud-only baseline, which starts from the edge too). Per minibatch the edge runs
the head and sends the cut feature map and the labels to the cloud over the WAN; the cloud
runs the tail, computes the loss F_c, steps its tail and returns the cut-layer gradient.
Every feature map, label vector and gradient is a message charged on the WAN.

- ``split`` (vanilla SL): the edges take turns; the head weights go cloud → edge → cloud →
  next edge (the cloud relays them, so they are charged on the WAN).
- ``splitfed``: edges in parallel, one tail at the cloud (it serves the edges' batches in
  delivery order, as SplitFedV2), then the cloud averages the edge parts with the weights
  U_i = samples_i / simulated time of edge i in the round (``throughput_weights``).
- ``ushaped``: SplitFed where the labels never leave the edge. The edge keeps blocks 1..j
  and the model's last block n; the cloud runs blocks j+1..n−1 and returns their output;
  the edge computes the loss, sends the gradient at that output back, and the cloud returns
  the cut-layer gradient (two WAN round trips per minibatch).

Collaborative training (seed 004): every edge also holds an early-exit head on the cut
features (the paper's "simplified cloud model" of the master node); while the cloud is
reachable both heads train with F = a·F_e + b·F_c (the cloud scales its loss by b). The
edges whose mode may change are ``split.master`` (an edge id, or ``all``): each measures the
round-trip delay T_rd of its exchanges on the transport clock and feeds a
``DormancySwitch``; while dormant it trains head + exit head on F_e alone and sends a tiny
``probe`` every ``probe_every`` batches to re-measure T_rd. Edge compute is charged once
per round after its exchanges (the simulated transport's rule), so the latency trace is
sampled at the exchange times of the WAN clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from fedge.algorithms.dormancy import DormancySwitch
from fedge.core.message import Message
from fedge.core.node import NodeApp, NodeContext
from fedge.core.settings import Section
from fedge.core.transport import Transport
from fedge.core.update import Update, Work
from fedge.learning import ArrayDataset, TrainConfig
from fedge.learning.split import SplitModel
from fedge.learning.training import make_optimizer, minibatches

CLOUD = "cloud"
CLOUD_CALLS = frozenset({"split_forward", "split_backward", "probe"})
"""The requests an edge sends the cloud's tail (a deployment refuses any other kind)."""


class SplitSettings(Section):
    """``[split]``: split / collaborative training; see the module docstring."""

    section: ClassVar[str] = "split"

    cut: int | Literal["tmoa"] = Field(
        2, description="blocks on the edge (0: cloud-only); 'tmoa': chosen by TMOA"
    )
    a: float = Field(0.3, ge=0, description="weight of the edge (early-exit) loss F_e")
    b: float = Field(0.7, gt=0, description="weight of the cloud loss F_c")
    t0_ms: float = Field(0.0, ge=0, description="dormancy threshold T0 on T_rd; 0: never")
    hysteresis: float = Field(0.2, ge=0, lt=1, description="dormancy band h around T0")
    probe_every: int = Field(10, ge=1, description="dormant batches between cloud probes")
    master: str = Field("all", description="edge that may go dormant, or 'all'")
    exit_pool: int = Field(4, ge=1, description="early-exit head pools C×H×W maps to this size")
    exit_threshold: float = Field(
        0.5, ge=0, description="entropy (nats) below which the edge answers; summary figures"
    )


@dataclass
class CloudTail:
    """The cloud side: the tail (or U-shaped body), its optimizer, the loss weight b."""

    parts: SplitModel
    config: TrainConfig
    b: float
    flops_per_sample: float
    """Training FLOPs of the tail for one sample."""
    _opt: torch.optim.Optimizer | None = None

    def register(self, app: NodeApp) -> NodeApp:
        app.on("split_forward", self.forward).on("split_backward", self.backward)
        return app.on("probe", lambda m, ctx: m.reply("pong"))

    def optimizer(self) -> torch.optim.Optimizer:
        if self._opt is None:
            self._opt = make_optimizer(self.parts.tail.parameters(), self.config)
        return self._opt

    def forward(self, message: Message, ctx: NodeContext) -> Message:
        feats = message.payload["features"].detach().clone().requires_grad_(True)
        self.parts.tail.train()
        opt = self.optimizer()
        opt.zero_grad()
        out = self.parts.tail(feats)
        n = int(feats.shape[0])
        ctx.add_work(Work(n, n * self.flops_per_sample))
        if "labels" not in message.payload:  # U-shaped: keep the graph, return the output
            ctx.state.setdefault("pending", {})[message.src] = (feats, out)
            return message.reply("split_output", {"features": out.detach()})
        loss = F.cross_entropy(out, message.payload["labels"])
        torch.autograd.backward(self.b * loss)
        opt.step()
        return message.reply("split_grad", {"grad": _grad(feats), "loss": float(loss.detach())})

    def backward(self, message: Message, ctx: NodeContext) -> Message:
        feats, out = ctx.state["pending"].pop(message.src)
        torch.autograd.backward(out, message.payload["grad"])
        self.optimizer().step()
        return message.reply("split_grad", {"grad": _grad(feats)})


def _grad(t: torch.Tensor) -> torch.Tensor:
    return t.grad.detach() if t.grad is not None else torch.zeros_like(t)


@dataclass(frozen=True)
class EdgeFlops:
    """Training FLOPs per sample of the edge parts."""

    head: float
    exit: float
    last: float = 0.0


@dataclass
class _Batch:
    """What one edge minibatch did (for the round's counters)."""

    n: int
    cloud: bool
    loss: float


@dataclass
class SplitEdge:
    """An edge split client: head (+ last block when U-shaped) and early-exit head."""

    parts: SplitModel
    data: Mapping[str, ArrayDataset]
    config: TrainConfig
    settings: SplitSettings
    flops: EdgeFlops

    def app(self, node_id: str) -> NodeApp:
        return NodeApp(node_id, "edge", {"split_train": self.train})

    def _switch(self, ctx: NodeContext) -> DormancySwitch | None:
        s = self.settings
        if s.t0_ms <= 0 or s.master not in ("all", ctx.node_id):
            return None
        sw: DormancySwitch = ctx.state.setdefault(
            "switch", DormancySwitch(s.t0_ms / 1e3, s.hysteresis)
        )
        return sw

    def train(self, message: Message, ctx: NodeContext) -> Message:
        down = ctx.downstream
        assert down is not None, "a split edge needs a transport to reach the cloud"
        data = self.data.get(ctx.node_id)
        self.parts.load_edge_state(message.payload["model"].state)
        if data is None or len(data) == 0:
            return message.reply("split_update", {"tasks": 0.0, "metrics": {}})
        for m in self.parts.edge_modules():
            m.train()
        opt = make_optimizer(self.parts.edge_parameters(), self.config)
        gen = torch.Generator().manual_seed(int(ctx.rng.integers(2**62)))
        switch = self._switch(ctx)
        before = switch.switches if switch is not None else 0
        batches: list[_Batch] = []
        xs, ys = data.x, data.y  # read once: an index view gathers on each read
        for idx in minibatches(len(data), self.config, gen):
            opt.zero_grad()
            batches.append(self._batch(xs[idx], ys[idx], switch, down, message, batches))
            opt.step()
        ctx.add_work(self._work(batches))
        out = self._result(batches, switch, before)
        out["update"] = replace(out["update"], origin=ctx.node_id, round=message.round)
        return message.reply("split_update", out)

    def _batch(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        switch: DormancySwitch | None,
        down: Transport,
        message: Message,
        done: list[_Batch],
    ) -> _Batch:
        me, r = message.dst, message.round
        if switch is None or not switch.dormant:
            loss, t_rd = self._cloud_step(x, y, down, me, r)
            if switch is not None:
                switch.observe(t_rd)
            return _Batch(len(y), True, loss)
        loss = self._local_step(x, y)
        dormant_run = 1
        for b in reversed(done):
            if b.cloud:
                break
            dormant_run += 1
        if dormant_run % self.settings.probe_every == 0:
            switch.observe(_timed(down, Message(me, CLOUD, "probe", r))[1])
        return _Batch(len(y), False, loss)

    def _work(self, batches: list[_Batch]) -> Work:
        fl = self.flops
        cloud = sum(b.n for b in batches if b.cloud)
        local = sum(b.n for b in batches if not b.cloud)
        exit_flops = fl.exit if self.settings.a > 0 else 0.0
        flops = cloud * (fl.head + exit_flops + fl.last) + local * (fl.head + fl.exit)
        return Work(cloud + local, flops)

    def _result(
        self, batches: list[_Batch], switch: DormancySwitch | None, before: int
    ) -> dict[str, Any]:
        cloud_losses = [b.loss for b in batches if b.cloud]
        local_losses = [b.loss for b in batches if not b.cloud]
        return {
            "update": Update(self.parts.edge_state()),
            "tasks": float(sum(b.n for b in batches)),
            "metrics": {
                "train_loss": _mean(cloud_losses),
                "edge_train_loss": _mean(local_losses),
                "cloud_batches": float(sum(b.cloud for b in batches)),
                "dormant_batches": float(sum(not b.cloud for b in batches)),
                "mode_switches": float((switch.switches if switch else 0) - before),
                "dormant_now": float(bool(switch and switch.dormant)),
            },
        }

    def _local_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Dormant cloud: F_e only, on head + exit head."""
        loss = F.cross_entropy(self.parts.exit(self.parts.head(x)), y)
        if loss.requires_grad:
            torch.autograd.backward(loss)
        return float(loss.detach())

    def _cloud_step(
        self, x: torch.Tensor, y: torch.Tensor, down: Transport, me: str, r: int
    ) -> tuple[float, float]:
        """Collaborative: F = a·F_e + b·F_c; returns (F_c, T_rd). A lost reply costs F_c."""
        h = self.parts.head(x)
        a = self.settings.a
        total = a * F.cross_entropy(self.parts.exit(h), y) if a > 0 else h.sum() * 0.0
        if self.parts.last is None:
            ask = Message(me, CLOUD, "split_forward", r, {"features": h.detach(), "labels": y})
            reply, t_rd = _timed(down, ask)
            loss_c = float(reply.payload["loss"]) if reply is not None else float("nan")
        else:
            reply, t_rd, loss_c = self._ushaped(h, y, down, me, r)
        if reply is not None:
            total = total + (h * reply.payload["grad"]).sum()
        if total.requires_grad:
            torch.autograd.backward(total)
        return loss_c, t_rd

    def _ushaped(
        self, h: torch.Tensor, y: torch.Tensor, down: Transport, me: str, r: int
    ) -> tuple[Message | None, float, float]:
        assert self.parts.last is not None
        ask = Message(me, CLOUD, "split_forward", r, {"features": h.detach()})
        out, t1 = _timed(down, ask)
        if out is None:
            return None, t1, float("nan")
        z = out.payload["features"].detach().clone().requires_grad_(True)
        loss_c = F.cross_entropy(self.parts.last(z), y)
        torch.autograd.backward(self.settings.b * loss_c)
        back, t2 = _timed(down, Message(me, CLOUD, "split_backward", r, {"grad": _grad(z)}))
        return back, t1 + t2, float(loss_c.detach())


def _timed(down: Transport, message: Message) -> tuple[Message | None, float]:
    """Send one message and measure its round trip T_rd on the transport clock."""
    before = down.now()
    replies = down.send([message])
    return (replies[0] if replies else None), down.now() - before


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")

"""The federated recommender: matrix factorisation trained with FedAvg through the edges.

Model: score(u, i) = p_u · q_i + b_i. The user embedding p_u lives on device u and never
leaves it; the item embeddings Q and biases b are the shared model. A round: the cloud's
(Q, b) goes to every device that has interactions; each device trains (p_u, Q, b) for
``local_epochs`` full-batch SGD steps on its own requests (logistic loss: its requested
items are positives, ``negatives`` uniformly drawn items per positive are negatives, L2
``reg``) and returns only its new (Q, b) with its number of interactions as weight; each
edge averages its attached devices' returns (``fedge.aggregation.mean.weighted_mean``), the
cloud averages the edges' means weighted by their devices' total weight — the FedAvg of
every device's update. No rating, request or user embedding leaves a device.

Predictions (FPCC-style): each device scores the catalogue locally and reports its top
``top_n`` items with their softmax weights; an edge's predicted demand is the sum of its
devices' reports weighted by their recent activity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from fedge.aggregation.mean import weighted_mean

ITEM_KEYS = ("items", "bias")
State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class DeviceUpdate:
    """What a device sends its edge after local training: the shared model's entries only."""

    state: State
    weight: float


class FederatedMF:
    """Global (Q, b) plus one private embedding per device (held in ``_private``, read only
    by the device's own methods)."""

    def __init__(
        self,
        items: int,
        dim: int,
        seed: int,
        *,
        lr: float = 1.0,
        reg: float = 1e-4,
        negatives: int = 4,
        local_epochs: int = 5,
    ) -> None:
        self.items, self.dim = items, dim
        self.lr, self.reg, self.negatives, self.local_epochs = lr, reg, negatives, local_epochs
        self._gen = torch.Generator().manual_seed(seed)
        self.global_state: State = {
            "items": 0.1 * torch.randn(items, dim, generator=self._gen),
            "bias": torch.zeros(items),
        }
        self._private: dict[int, torch.Tensor] = {}

    def _user(self, device: int) -> torch.Tensor:
        if device not in self._private:
            self._private[device] = 0.1 * torch.randn(self.dim, generator=self._gen)
        return self._private[device]

    def local_update(self, device: int, interactions: NDArray[np.int64]) -> DeviceUpdate:
        """Device ``device`` trains on its own requests and returns (Q, b) only."""
        p = self._user(device).clone().requires_grad_(True)
        q = self.global_state["items"].clone().requires_grad_(True)
        b = self.global_state["bias"].clone().requires_grad_(True)
        pos = torch.as_tensor(interactions, dtype=torch.long)
        opt = torch.optim.SGD([p, q, b], lr=self.lr)
        for _ in range(self.local_epochs):
            neg = torch.randint(0, self.items, (len(pos) * self.negatives,), generator=self._gen)
            idx = torch.cat([pos, neg])
            label = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
            logit = q[idx] @ p + b[idx]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, label)
            loss = loss + self.reg * (p.square().sum() + q[idx].square().sum())
            opt.zero_grad()
            torch.autograd.backward(loss)
            opt.step()
        self._private[device] = p.detach()
        return DeviceUpdate({"items": q.detach(), "bias": b.detach()}, float(len(pos)))

    def round(
        self, interactions: Mapping[int, NDArray[np.int64]], edge_of: Mapping[int, int]
    ) -> list[DeviceUpdate]:
        """One FedAvg round over the devices with interactions, devices -> edges -> cloud;
        returns the device updates (for inspection), having replaced the global model."""
        updates = {d: self.local_update(d, x) for d, x in sorted(interactions.items()) if len(x)}
        if not updates:
            return []
        per_edge: dict[int, list[DeviceUpdate]] = {}
        for d, up in updates.items():
            per_edge.setdefault(edge_of[d], []).append(up)
        edge_means = [
            DeviceUpdate(
                weighted_mean([u.state for u in ups], [u.weight for u in ups]),
                sum(u.weight for u in ups),
            )
            for _, ups in sorted(per_edge.items())
        ]
        self.global_state = weighted_mean(
            [m.state for m in edge_means], [m.weight for m in edge_means]
        )
        return list(updates.values())

    def device_report(
        self, device: int, top_n: int
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """The device's top items and their softmax weights, computed on the device."""
        with torch.no_grad():
            scores = self.global_state["items"] @ self._user(device) + self.global_state["bias"]
            top = torch.topk(scores, min(top_n, self.items))
            weights = torch.softmax(top.values, 0)
        return top.indices.numpy().astype(np.int64), weights.numpy().astype(np.float64)

    def edge_demand(
        self, devices: Sequence[int], activity: Sequence[float], top_n: int
    ) -> NDArray[np.float64]:
        """Predicted demand per item at an edge: Σ over its devices of activity × report."""
        demand = np.zeros(self.items)
        for d, a in zip(devices, activity, strict=True):
            top, w = self.device_report(d, top_n)
            np.add.at(demand, top, a * w)
        return demand

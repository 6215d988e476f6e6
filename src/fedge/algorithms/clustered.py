"""Clustered hierarchical FL (SPEC §3B, clustered variant): one model per cluster of devices.

The clustering is CFL's cosine bipartitioning (Sattler, Müller and Samek, "Clustered
Federated Learning: Model-Agnostic Distributed Multitask Optimization Under Privacy
Constraints", IEEE TNNLS 2021, arXiv:1910.01991), run by the cloud over a device -> edge ->
cloud hierarchy:

- The cloud keeps one model per cluster and which cluster each device belongs to; at the
  start every device is in one cluster holding the initial model.
- Cloud round r: every edge gets every cluster's model (at most ``max_clusters``) and the
  assignment (``cluster_train``), and runs ``federation.kappa2`` edge rounds; in each, every
  attached device trains its cluster's model (``federation.kappa1`` local rounds) and the
  edge averages the replies per cluster with the configured aggregator. The edge sends up
  one model per cluster (weighted by the samples behind it) and the norms ‖Δ_i‖ of its
  devices' updates of the last edge round; it keeps those updates.
- The cloud aggregates each cluster's edge models (FedAvg weights). CFL's split criterion
  (its Algorithm 1): a cluster is split when its mean update is near a stationary point,
  ‖Δ̄_c‖ < ``eps1`` (Δ̄_c is the cluster model's change this round), while some device is
  far from one, max_i ‖Δ_i‖ > ``eps2``. The cloud then fetches the cluster's device updates
  from the edges (``get_updates``; charged as model transfers) and bipartitions them so the
  largest cosine similarity across the two sides is smallest: complete-linkage hierarchical
  clustering on 1 − cos (SciPy), cut into two, which is CFL's optimal bipartition. Both
  halves start from the cluster's model.

Interpretations: splits are considered from cloud round ``warmup_rounds`` + 1 on (CFL
trains the single model to near-stationarity first; the thresholds then decide), at most
one split per cluster per round and never beyond ``max_clusters``, and only when both halves
hold ``min_cluster_size`` devices; the update norms and the bipartition use the device
updates of the last edge round of the cloud round, relative to the model the edge sent; a
device that moved to another edge keeps its cluster.

Evaluation (a measurement, like the observer's, not charged): ``accuracy`` is the mean over
devices of their cluster's model on their own test split, with the spread
(``spread_summary``); ``clusters`` counts the clusters; with a ``regional`` partition (true
group: the edge a device is attached to at time 0, as the partitioner uses) or ``shards``
(true group: the device's majority training class) ``cluster_purity`` is
(1/N)·Σ_clusters max_group |cluster ∩ group|.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from fedge.aggregation.neighbours import cosine_similarity
from fedge.aggregation.pipeline import ServerPipeline
from fedge.algorithms.base import (
    AlgorithmSpec,
    Assembly,
    BuildContext,
    RoundLoop,
    RoundRecord,
    register_algorithm,
)
from fedge.algorithms.federation import device_apps, hierarchy_settings
from fedge.algorithms.hierarchical import spread_summary
from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.core.node import NodeApp, NodeContext
from fedge.core.settings import Section
from fedge.core.transport import Transport
from fedge.core.update import ModelState, Update, delta, flatten
from fedge.learning import ArrayDataset

Cluster = int


class ClusterSettings(Section):
    """``[clustering]``: CFL's split criterion and limits (the hierarchy's rounds, sampling
    and aggregator come from ``[federation]``)."""

    section: ClassVar[str] = "clustering"

    eps1: float = Field(0.4, ge=0, description="split when the cluster's mean update norm < eps1")
    eps2: float = Field(1.6, ge=0, description="... and some device's update norm > eps2")
    max_clusters: int = Field(4, ge=1)
    min_cluster_size: int = Field(1, ge=1, description="devices each half of a split must hold")
    warmup_rounds: int = Field(0, ge=0, description="cloud rounds before any split")


def purity(clusters: Mapping[str, Cluster], groups: Mapping[str, Any]) -> float:
    """(1/N)·Σ_k max_g |C_k ∩ G_g| over the devices in ``clusters``."""
    if not clusters:
        return float("nan")
    members: dict[Cluster, Counter[Any]] = {}
    for device, c in clusters.items():
        members.setdefault(c, Counter())[groups[device]] += 1
    return sum(max(counts.values()) for counts in members.values()) / len(clusters)


def bipartition(updates: Mapping[str, ModelState]) -> tuple[list[str], list[str]]:
    """CFL's bipartition of ``updates``: the two sides whose largest cross-side cosine
    similarity is smallest (complete linkage on 1 − cos, cut into two clusters); each side
    sorted by id, the side holding the first id first."""
    ids = sorted(updates)
    if len(ids) < 2:
        return ids, []
    vectors = [flatten(updates[i]) for i in ids]
    n = len(ids)
    dist = np.zeros((n, n))
    for a in range(n):
        for b in range(a + 1, n):
            dist[a, b] = dist[b, a] = 1.0 - cosine_similarity(vectors[a], vectors[b])
    labels = fcluster(linkage(squareform(dist, checks=False), "complete"), 2, "maxclust")
    first = [i for i, lab in zip(ids, labels, strict=True) if lab == labels[0]]
    return first, [i for i in ids if i not in first]


def _norm(state: ModelState) -> float:
    return float(torch.linalg.vector_norm(flatten(state)))


@dataclass
class ClusterEdge:
    """An edge: per-cluster FedAvg rounds over its attached devices; keeps their updates."""

    pipeline: ServerPipeline
    deadline_s: float | None = None

    def train(self, message: Message, ctx: NodeContext) -> Message:
        p = message.payload
        down = ctx.downstream
        assert down is not None, "an edge needs a downstream transport"
        models: dict[Cluster, ModelState] = {c: u.state for c, u in p["models"].items()}
        assign: dict[str, Cluster] = p["assign"]
        here = set(down.nodes("device"))
        members = {c: [d for d, k in assign.items() if k == c and d in here] for c in models}
        members = {c: devices for c, devices in members.items() if devices}
        weights: dict[Cluster, float] = {}
        kept: dict[str, ModelState] = {}
        for k in range(int(p["edge_rounds"])):
            index = int(p["first_round"]) + k
            kept = {}
            for c, devices in members.items():
                start = models[c]
                sent = {
                    "model": Update(start, origin=ctx.node_id, round=index),
                    "train": p["train"],
                }
                asks = [Message(ctx.node_id, d, "train", index, sent) for d in devices]
                got = [m.payload["update"] for m in down.send(asks, self.deadline_s)]
                if not got:
                    continue
                models[c] = self.pipeline.run(start, got, ctx.rng)
                weights[c] = float(sum(u.weight for u in got))
                kept.update({u.origin: delta(u.state, start) for u in got})
        ctx.state["updates"] = kept
        out = {
            c: Update(models[c], weights[c], origin=ctx.node_id, round=message.round)
            for c in weights
        }
        norms = {d: _norm(u) for d, u in kept.items()}
        return message.reply("cluster_update", {"models": out, "norms": norms})

    def get_updates(self, message: Message, ctx: NodeContext) -> Message:
        """The kept updates of the asked devices (the cloud is about to split their cluster)."""
        wanted = set(message.payload["devices"])
        kept: dict[str, ModelState] = ctx.state.get("updates", {})
        updates = {
            d: Update(u, kind="delta", origin=d, round=message.round)
            for d, u in kept.items()
            if d in wanted
        }
        return message.reply("updates", {"updates": updates})


Evaluate = Callable[[ModelState, ArrayDataset], Mapping[str, float]]


@dataclass
class ClusteredHFL(RoundLoop):
    """The cloud side of clustered hierarchical FL (CFL); see the module docstring."""

    settings: ClusterSettings
    devices: list[str]
    tests: dict[str, ArrayDataset]
    evaluate: Evaluate
    groups: dict[str, Any] | None = None
    kappa1: int = 1
    kappa2: int = 1
    aggregator: str = "mean"
    aggregator_params: Mapping[str, Any] = field(default_factory=dict)
    deadline_s: float | None = None
    evaluate_every: int = 1

    def __post_init__(self) -> None:
        self.pipeline = ServerPipeline(self.aggregator, dict(self.aggregator_params))
        self.models: dict[Cluster, ModelState] = {}
        self.assign: dict[str, Cluster] = {}

    def step(
        self, transport: Transport, state: ModelState, rng: np.random.Generator, r: int, rounds: int
    ) -> RoundRecord:
        if r == 1 or not self.models:
            self.models, self.assign = {0: state}, dict.fromkeys(self.devices, 0)
        replies = transport.send(self._requests(transport, r), self.deadline_s)
        before = dict(self.models)
        norms: dict[str, float] = {}
        for c in list(self.models):
            ups = [m.payload["models"][c] for m in replies if c in m.payload["models"]]
            if ups:
                self.models[c] = self.pipeline.run(before[c], ups, rng)
        for m in replies:
            norms.update(m.payload["norms"])
        split = 0
        if r > self.settings.warmup_rounds:
            for c in list(before):
                split += self._maybe_split(transport, c, before[c], norms, r)
        metrics: dict[str, float] = {
            "clusters": float(len(self.models)),
            "cluster_splits": float(split),
            "participants": float(len(norms)),
        }
        if self.groups is not None:
            metrics["cluster_purity"] = purity(self.assign, self.groups)
        due = r % self.evaluate_every == 0 or r == rounds
        if due:
            metrics.update(self._evaluate())
        largest = Counter(self.assign.values()).most_common(1)[0][0]
        return RoundRecord(r, self.models[largest], metrics, evaluated=due)

    def _requests(self, transport: Transport, r: int) -> list[Message]:
        models = {c: Update(m, origin=transport.node_id, round=r) for c, m in self.models.items()}
        payload = {
            "edge_rounds": self.kappa2,
            "first_round": (r - 1) * self.kappa2 + 1,
            "train": {"local_rounds": self.kappa1},
            "models": models,
            "assign": dict(self.assign),
        }
        return [
            Message(transport.node_id, e, "cluster_train", r, payload)
            for e in transport.nodes("edge")
        ]

    def _maybe_split(
        self,
        transport: Transport,
        c: Cluster,
        before: ModelState,
        norms: Mapping[str, float],
        r: int,
    ) -> int:
        s = self.settings
        members = sorted(d for d, k in self.assign.items() if k == c)
        mine = [norms[d] for d in members if d in norms]
        if len(self.models) >= s.max_clusters or len(mine) < 2 * s.min_cluster_size:
            return 0
        mean_norm = _norm(delta(self.models[c], before))
        if not (mean_norm < s.eps1 and max(mine) > s.eps2):
            return 0
        asks = [
            Message(transport.node_id, e, "get_updates", r, {"devices": members})
            for e in transport.nodes("edge")
        ]
        updates: dict[str, ModelState] = {}
        for m in transport.send(asks):
            updates.update({d: u.state for d, u in m.payload["updates"].items()})
        left, right = bipartition(updates)
        if min(len(left), len(right)) < s.min_cluster_size:
            return 0
        new = max(self.models) + 1
        self.models[new] = dict(self.models[c])
        for d in right:
            self.assign[d] = new
        return 1

    def _evaluate(self) -> dict[str, float]:
        evals = [
            dict(self.evaluate(self.models[self.assign[d]], self.tests[d]))
            for d in self.devices
            if len(self.tests[d])
        ]
        return spread_summary(evals)


def true_groups(ctx: BuildContext) -> dict[str, Any] | None:
    """Each device's true data group for ``cluster_purity``: its edge at time 0 under the
    ``regional`` partition, its majority training class under ``shards``; else None."""
    devices = ctx.system.ids("device")
    partition = ctx.config.data.partition
    if partition == "regional":
        return {d: ctx.system.attachment(d, 0.0) for d in devices}
    if partition == "shards":
        labels = ctx.train.y.numpy()
        return {
            d: int(np.bincount(labels[idx]).argmax()) if len(idx) else -1
            for d, idx in zip(devices, ctx.parts, strict=True)
        }
    return None


def assemble_clustered(ctx: BuildContext) -> Assembly:
    """Devices train, edges run per-cluster FedAvg rounds, the cloud clusters (CFL)."""
    s = ctx.config.federation
    pipeline = ServerPipeline(s.aggregator, dict(s.aggregator_params))
    edge = ClusterEdge(pipeline, s.deadline_s)
    edges = {
        e: NodeApp(
            e,
            "edge",
            {"cluster_train": edge.train, "get_updates": edge.get_updates},
            offload=frozenset({"cluster_train"}),  # its run state is in the node state
        )
        for e in ctx.system.ids("edge")
    }
    devices = ctx.system.ids("device")

    def evaluate_on(state: ModelState, data: ArrayDataset) -> dict[str, float]:
        return dict(ctx.evaluator(data)(state))

    tests = {d: ctx.train.subset(idx) for d, idx in zip(devices, ctx.local_tests, strict=True)}
    coordinator = ClusteredHFL(
        ctx.settings,
        devices,
        tests,
        evaluate_on,
        true_groups(ctx),
        **hierarchy_settings(s),
        evaluate_every=s.evaluate_every,
    )
    return Assembly(device_apps(ctx, edges), coordinator)


def _check(config: Any) -> None:
    if config.data.local_test_fraction == 0:
        allowed = "a share in (0, 1) for 'clustered_hfl': devices are evaluated on own splits"
        raise ConfigError("data.local_test_fraction", 0, allowed)


register_algorithm(
    AlgorithmSpec(
        "clustered_hfl",
        "Clustered hierarchical FL: CFL cosine bipartitioning at the cloud, one model per cluster",
        assemble_clustered,
        ClusterSettings,
        roles=("edge",),
        links=("device-edge",),
        personalized=True,
        check=_check,
        finetune="none",
    )
)

"""Decentralized personalized FL (seed 001): DFL gossip, DPMN and its baselines.

No server: every device keeps its own model and talks only to its neighbours in the peer
graph (``transport.nodes("device")`` at the device). The coordinator is a round driver: it
tells every device when a round's two phases start and collects their metrics; on the
simulated engine it sits at the ``sync`` node, whose messages cost nothing (the protocol
assumes synchronous rounds, not a server).

Round r, phase 1 (``peer_train``): each device trains on its own data. Personalized methods
minimise f_i(x_i) + λ·h_i(x_i) with h_i = (1/|S_i|) Σ_j J(‖m_ij ∘ (x_i − x_j)‖²),
J(u) = 1 − e^(−u), over the neighbour models x_j fetched at the end of round r − 1, while
pruned weights stay zero; then the device prunes to the round's sparsity (cubic schedule up
to ``sparsity``, per tensor, by magnitude) and publishes its masked model and its update
Δ_i = x̃_i^r − x̃_i^(r−1) in the sparse encoding (kept values plus the packed mask).

Phase 2 (``peer_exchange``): each device picks its neighbours S_i among its graph peers and
fetches their published models; the bytes charged are those of the encoded messages. DFL
averages at once (gossip); the others keep the models for the next round's regulariser.

Interpretations, where the paper is terse (SPEC §3E):
- every device starts from the same initial model (an agreed seed, nothing is sent);
- DPMN selects by the cosine similarity of updates: in round 1 and every ``reselect_every``
  rounds a device fetches the sparse update of every graph peer and keeps those with
  similarity >= δ (most similar first, at most ``max_neighbours`` when > 0); in other rounds
  it keeps S_i minus peers that left its neighbourhood. DPCG ranks the peers' masked models
  by Euclidean distance to its own at the same rounds and keeps the ``neighbours`` nearest (those
  models double as the round's fetch); DPMN-R draws ``neighbours`` peers at random then, so its
  choice never depends on δ; DPMP and DFL use every graph peer each round;
- DFL mixes its own and its neighbours' models with equal weights (1/(1 + |N_i|)) or
  Metropolis-Hastings weights (1/(1 + max(d_i, d_j))), dense and unpruned, without a
  regulariser;
- m_ij is the overlap of the two masks (a key dense on both sides is unmasked);
- what DPMN's cosine similarity compares is ``similarity``: ``update`` (default) the two
  devices' sparse updates Δ_i, Δ_j of the round; ``model`` their masked models x̃_i, x̃_j
  (fetched from every peer, they double as the round's fetch); ``mask_overlap`` the updates
  restricted to m_ij (the dot product is unchanged, the norms count only shared weights).
  Each reselection round reports the distribution of the similarities it thresholded
  (``similarity_mean``, ``_p10``, ``_p50``, ``_p90``, ``_max`` over every device-peer pair).
  Measured on the DPMN recipe (examples/dpmn/README.md, "Which similarity"): update cosines
  between neighbours have a median near 0 (p90 about 0.5 in round 1, under 0.2 later), so
  δ = 0.2 keeps almost no neighbours; model cosines are 0.97-0.998 for every pair (the shared
  initial model dominates), so any δ below that keeps every peer and DPMN becomes DPMP; the
  mask overlap changes the update reading little. No reading makes δ ≈ 0.2 a trade-off
  point, so ``update``, the paper's wording, stays the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedge.aggregation.mean import weighted_mean
from fedge.aggregation.neighbours import (
    above_threshold,
    cosine_scores,
    euclidean_neighbours,
    random_neighbours,
)
from fedge.algorithms.base import (
    AlgorithmSpec,
    Assembly,
    BuildContext,
    RoundLoop,
    RoundRecord,
    register_algorithm,
)
from fedge.algorithms.hierarchical import edge_eval_summary, spread_summary
from fedge.core.codec import encoded
from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.core.node import LazyApps, NodeApp, NodeContext
from fedge.core.settings import Section
from fedge.core.sparse import decode_mask, encode_sparse
from fedge.core.transport import SYNC, Transport
from fedge.core.update import ModelState, Update, Work, clone_state, delta
from fedge.learning import ArrayDataset, TrainConfig, load_state, local_train, state_of
from fedge.learning.pruning import (
    Mask,
    MaskHook,
    NeighbourPull,
    adaptive_sparsity,
    apply_mask,
    magnitude_mask,
    mask_density,
    mask_overlap,
)
from fedge.learning.training import StepHook

SELECTIONS = ("cosine", "euclidean", "random", "all")
MIXINGS = ("equal", "metropolis")
Evaluate = Callable[[ModelState, ArrayDataset], Mapping[str, float]]
PeerModel = tuple[ModelState, Mask, int]
"""A fetched neighbour model: its state, its mask and the sender's degree in the graph."""


@dataclass(frozen=True)
class PeerMethod:
    """What distinguishes the decentralized methods."""

    prune: bool
    selection: str
    """How S_i is chosen among the graph peers: one of ``SELECTIONS``."""
    average: bool
    """True: gossip averaging (DFL); False: the J regulariser (personalized methods)."""


METHODS: dict[str, PeerMethod] = {
    "dfl": PeerMethod(prune=False, selection="all", average=True),
    "dpmn": PeerMethod(prune=True, selection="cosine", average=False),
    "dpmp": PeerMethod(prune=True, selection="all", average=False),
    "dpcg": PeerMethod(prune=True, selection="euclidean", average=False),
    "dpmn_r": PeerMethod(prune=True, selection="random", average=False),
}


class PeerSettings(Section):
    """``[decentralized]``: the knobs of SPEC §3E; defaults as there (δ = 0.2) or below."""

    section: ClassVar[str] = "decentralized"

    sparsity: float = Field(0.5, ge=0, lt=1, description="target pruned share per tensor")
    prune_warmup: int = Field(0, ge=0, description="dense rounds before pruning starts")
    lam: float = Field(1.0, ge=0, alias="lambda", description="weight of the regulariser")
    delta: float = Field(0.2, ge=-1, le=1, description="DPMN cosine-similarity threshold")
    neighbours: int = Field(3, ge=0, description="neighbours kept by dpcg and dpmn_r")
    max_neighbours: int = Field(0, ge=0, description="cap on DPMN neighbours; 0: none")
    reselect_every: int = Field(5, ge=1, description="rounds between neighbour selections")
    mixing: Literal["equal", "metropolis"] = "equal"
    similarity: Literal["update", "model", "mask_overlap"] = Field(
        "update",
        description="what DPMN's cosine similarity compares: the peers' sparse updates "
        "(update), their masked models (model), or their updates on the overlap of the two "
        "masks (mask_overlap)",
    )


PEER_CALLS = frozenset({"get_model", "get_update"})
"""The requests a device answers to its graph peers (the others come from the round driver);
a deployment refuses any other kind between devices."""


@dataclass
class PeerLearner:
    """A device of a decentralized method: trains, prunes, publishes, picks and fetches peers.

    The model object is shared by every device of a process (each handler loads the device's
    own state first). ``test`` is the device's own test split; ``global_test`` the shared one.
    """

    method: PeerMethod
    settings: PeerSettings
    model: nn.Module
    data: ArrayDataset
    test: ArrayDataset
    config: TrainConfig
    flops_per_sample: float
    evaluate: Evaluate
    global_test: ArrayDataset | None = None

    def app(self, node_id: str) -> NodeApp:
        app = NodeApp(node_id, "device", offload=frozenset({"peer_train"}))  # state-only
        app.on("peer_train", self.train).on("peer_exchange", self.exchange)
        return app.on("get_model", self.get_model).on("get_update", self.get_update)

    # -- phase 1 -----------------------------------------------------------------------
    def train(self, message: Message, ctx: NodeContext) -> Message:
        st = ctx.state
        if "model" not in st:
            st["model"] = clone_state(message.payload["model"].state)
            st["mask"] = {}
        before: ModelState = st["model"]
        load_state(self.model, before)
        hooks: list[StepHook] = []
        if st["mask"]:
            hooks.append(MaskHook(self.model, st["mask"]))
        neighbours: dict[str, tuple[ModelState, Mask]] = st.get("neighbours", {})
        pull = None
        if neighbours and not self.method.average:
            pairs = [(x_j, mask_overlap(st["mask"], m_j)) for x_j, m_j in neighbours.values()]
            pull = NeighbourPull(self.model, pairs, self.settings.lam)
            hooks.append(pull)
        gen = torch.Generator().manual_seed(int(ctx.rng.integers(2**62)))
        result = local_train(self.model, self.data, self.config, gen, hooks=hooks)
        state = state_of(self.model)
        mask: Mask = {}
        update = delta(state, before)
        if self.method.prune:
            rounds = int(message.payload["rounds"])
            cfg = self.settings
            s = adaptive_sparsity(message.round - 1, rounds, cfg.sparsity, cfg.prune_warmup)
            mask = magnitude_mask(state, s)
            state, update = apply_mask(state, mask), apply_mask(update, mask)
        n_params = sum(p.numel() for p in self.model.parameters())
        reg_flops = 4.0 * n_params * len(neighbours) * result.steps if pull else 0.0
        ctx.add_work(Work(result.samples, result.samples * self.flops_per_sample + reg_flops))
        st["model"], st["mask"], st["update"] = state, mask, update
        mine = Update({}, origin=ctx.node_id, round=message.round)
        st["published"] = encoded(mine, "mask", encode_sparse(state, mask))
        if self.method.selection == "cosine":  # only DPMN's peers ask for updates
            st["published_update"] = encoded(mine, "mask", encode_sparse(update, mask), "delta")
        metrics = {
            "train_loss": result.loss,
            "regulariser": pull.value if pull is not None else 0.0,
            "density": mask_density(mask),
        }
        return message.reply("trained", {"metrics": metrics})

    # -- what peers may ask for ----------------------------------------------------------
    def get_model(self, message: Message, ctx: NodeContext) -> Message:
        degree = len(ctx.downstream.nodes("device")) if ctx.downstream is not None else 0
        return message.reply("model", {"model": ctx.state["published"], "degree": degree})

    def get_update(self, message: Message, ctx: NodeContext) -> Message:
        return message.reply("update", {"update": ctx.state["published_update"]})

    # -- phase 2 -----------------------------------------------------------------------
    def exchange(self, message: Message, ctx: NodeContext) -> Message:
        down = ctx.downstream
        assert down is not None, "a device needs a downstream transport to reach its peers"
        st = ctx.state
        peers = down.nodes("device")
        chosen, fetched = self._select(message.round, ctx, down, peers)
        st["selected"] = chosen
        missing = [p for p in chosen if p not in fetched]
        fetched.update(self._models(down, missing, message.round, st["model"]))
        got = {p: fetched[p] for p in chosen if p in fetched}
        if self.method.average:
            st["model"] = self._mix(st["model"], len(peers), got)
            st["neighbours"] = {}
        else:
            st["neighbours"] = {p: (x, m) for p, (x, m, _) in got.items()}
        out: dict[str, Any] = {
            "metrics": {"neighbours": float(len(got)), "peers": float(len(peers))}
        }
        if "similarities" in st:  # DPMN reselected: the similarities it thresholded
            out["similarities"] = st.pop("similarities")
        if message.payload.get("evaluate"):
            out["eval"] = dict(self.evaluate(st["model"], self.test))
            if self.global_test is not None:
                out["global_eval"] = dict(self.evaluate(st["model"], self.global_test))
        return message.reply("exchanged", out)

    def _select(
        self, r: int, ctx: NodeContext, down: Transport, peers: list[str]
    ) -> tuple[list[str], dict[str, PeerModel]]:
        """(S_i, models already fetched while choosing it)."""
        kind = self.method.selection
        if kind == "all":
            return list(peers), {}
        previous: list[str] | None = ctx.state.get("selected")
        due = previous is None or (r - 1) % self.settings.reselect_every == 0
        if not due:
            assert previous is not None
            return [p for p in previous if p in peers], {}
        if kind == "random":
            return random_neighbours(peers, self.settings.neighbours, ctx.rng), {}
        own = ctx.state["model"]
        if kind == "euclidean":
            models = self._models(down, peers, r, own)
            states = {p: x for p, (x, _, _) in models.items()}
            return euclidean_neighbours(own, states, self.settings.neighbours), models
        sims, models = self._similarities(ctx, down, peers, r)
        ctx.state["similarities"] = sorted(sims.values())
        chosen = above_threshold(sims, self.settings.delta)
        cap = self.settings.max_neighbours
        return (chosen[:cap] if cap else chosen), models

    def _similarities(
        self, ctx: NodeContext, down: Transport, peers: list[str], r: int
    ) -> tuple[dict[str, float], dict[str, PeerModel]]:
        """DPMN's cosine similarity with each peer under ``settings.similarity`` (and the
        models fetched to compute it, which double as the round's fetch)."""
        st = ctx.state
        if self.settings.similarity == "model":
            models = self._models(down, peers, r, st["model"])
            return cosine_scores(st["model"], {p: x for p, (x, _, _) in models.items()}), models
        replies = self._fetch(down, "get_update", peers, r)
        updates: dict[str, Update] = {p: m.payload["update"] for p, m in replies.items()}
        if self.settings.similarity == "update":
            return cosine_scores(st["update"], {p: u.state for p, u in updates.items()}), {}
        sims = {}
        for p, u in updates.items():
            assert u.encoding is not None, "peers publish their updates in the mask codec"
            both = mask_overlap(st["mask"], decode_mask(u.encoding.data))
            mine = apply_mask(st["update"], both)
            sims[p] = cosine_scores(mine, {p: apply_mask(u.state, both)})[p]
        return sims, {}

    @staticmethod
    def _fetch(down: Transport, kind: str, peers: Sequence[str], r: int) -> dict[str, Message]:
        if not peers:
            return {}
        replies = down.send([Message(down.node_id, p, kind, r) for p in peers])
        return {m.src: m for m in replies}

    def _models(
        self, down: Transport, peers: Sequence[str], r: int, own: ModelState
    ) -> dict[str, PeerModel]:
        """The peers' published models, decoded once: (state, mask, the peer's degree)."""
        out: dict[str, PeerModel] = {}
        for p, m in self._fetch(down, "get_model", peers, r).items():
            model: Update = m.payload["model"]
            assert model.encoding is not None, "peers publish their models in the mask codec"
            out[p] = (model.state, decode_mask(model.encoding.data), int(m.payload["degree"]))
        return out

    def _mix(self, own: ModelState, degree: int, got: Mapping[str, PeerModel]) -> ModelState:
        if not got:
            return own
        states = [own, *(x for x, _, _ in got.values())]
        if self.settings.mixing == "equal":
            return weighted_mean(states, [1.0] * len(states))
        peer_w = [1.0 / (1 + max(degree, d)) for _, _, d in got.values()]
        return weighted_mean(states, [1.0 - sum(peer_w), *peer_w])


@dataclass
class Decentralized(RoundLoop):
    """The round driver: phase 1 on every device, then phase 2, then the round's metrics.

    Metrics: ``accuracy`` (and precision, recall, F1, loss) is the mean over devices of each
    device's model on its own test split, with ``accuracy_min`` / ``accuracy_max``; the same
    on the global test set under ``global_*``; ``neighbours`` is the mean |S_i|. Replies are
    summarised (and the evaluated sample drawn) in the devices' order, not in arrival order,
    so every engine reports the same floats.
    """

    method: str = "dpmn"
    evaluate_every: int = 1
    deadline_s: float | None = None
    eval_devices: int = 0
    """Devices whose own models are evaluated, drawn at random each evaluation (0: all);
    a large population's evaluation costs what the sample costs."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError("algorithm", self.method, " | ".join(METHODS))
        if self.evaluate_every < 1:
            raise ConfigError("federation.evaluate_every", self.evaluate_every, "an integer >= 1")

    def step(
        self,
        transport: Transport,
        initial: ModelState,
        rng: np.random.Generator,
        r: int,
        rounds: int,
    ) -> RoundRecord:
        due = r % self.evaluate_every == 0 or r == rounds
        payload: dict[str, Any] = {"rounds": rounds}
        if r == 1:
            payload["model"] = Update(initial, origin=transport.node_id, round=r)
        here = transport.node_id
        devices = transport.nodes("device")
        asks = [Message(here, d, "peer_train", r, payload) for d in devices]
        trained = transport.send(asks, self.deadline_s)
        judged = self._judged(_ordered(devices, [m.src for m in trained]), rng) if due else None
        asks = [
            Message(here, m.src, "peer_exchange", r, {"evaluate": due and _in(m.src, judged)})
            for m in trained
        ]
        exchanged = transport.send(asks)
        rank = {d: i for i, d in enumerate(devices)}
        trained = sorted(trained, key=lambda m: rank.get(m.src, len(rank)))
        exchanged = sorted(exchanged, key=lambda m: rank.get(m.src, len(rank)))
        metrics: dict[str, float] = {
            "participants": float(len(trained)),
            "train_loss": _mean(m.payload["metrics"]["train_loss"] for m in trained),
            "density": _mean(m.payload["metrics"]["density"] for m in trained),
            "regulariser": _mean(m.payload["metrics"]["regulariser"] for m in trained),
            "neighbours": _mean(m.payload["metrics"]["neighbours"] for m in exchanged),
        }
        metrics.update(similarity_summary(exchanged))
        metrics.update(
            spread_summary([m.payload["eval"] for m in exchanged if "eval" in m.payload])
        )
        glob = edge_eval_summary(
            [m.payload["global_eval"] for m in exchanged if "global_eval" in m.payload]
        )
        metrics.update({f"global_{k}": v for k, v in glob.items()})
        if judged is not None:
            metrics["eval_devices"] = float(len(judged))
        return RoundRecord(r, initial, metrics, evaluated=due)

    def _judged(self, devices: list[str], rng: np.random.Generator) -> set[str] | None:
        """The devices evaluated this round: a uniform sample of ``eval_devices`` (None: all)."""
        if not self.eval_devices or self.eval_devices >= len(devices):
            return None
        picked = rng.choice(len(devices), size=self.eval_devices, replace=False)
        return {devices[int(i)] for i in picked}


def _ordered(devices: Sequence[str], ids: Sequence[str]) -> list[str]:
    """``ids`` in the order of ``devices`` (how a transport listed them)."""
    present = set(ids)
    return [d for d in devices if d in present]


def _in(device: str, judged: set[str] | None) -> bool:
    return judged is None or device in judged


def similarity_summary(exchanged: Sequence[Message]) -> dict[str, float]:
    """The distribution of the cosine similarities DPMN thresholded this round, over every
    (device, graph peer) pair of the devices that reselected: mean, p10, median, p90 and the
    share at or above zero; empty in rounds without a reselection."""
    sims = [s for m in exchanged for s in m.payload.get("similarities", [])]
    if not sims:
        return {}
    arr = np.asarray(sims, dtype=float)
    p10, p50, p90 = np.percentile(arr, [10, 50, 90])
    return {
        "similarity_mean": float(arr.mean()),
        "similarity_p10": float(p10),
        "similarity_p50": float(p50),
        "similarity_p90": float(p90),
        "similarity_max": float(arr.max()),
    }


def _mean(values: Any) -> float:
    vals = list(values)
    return float(np.mean(vals)) if vals else float("nan")


_DESCRIPTIONS = {
    "dfl": "Decentralized FL: local training, then gossip averaging with every graph neighbour",
    "dpmn": "DPMN: pruned personalized models, neighbours by update cosine similarity >= delta",
    "dpmp": "DPMP: pruned personalized models regularised towards every graph neighbour",
    "dpcg": "DPCG: pruned personalized models, k neighbours nearest in Euclidean distance",
    "dpmn_r": "DPMN-R: DPMN with k neighbours drawn at random",
}


def decentralized(method: str) -> Callable[[BuildContext], Assembly]:
    """The hook of one decentralized method: devices with their own train and test splits,
    driven from the round barrier."""

    def assemble(ctx: BuildContext) -> Assembly:
        model = ctx.model

        def evaluate_on(state: ModelState, data: ArrayDataset) -> dict[str, float]:
            return dict(ctx.evaluator(data)(state))

        topology = ctx.system.topology

        def make(dev: str) -> NodeApp:
            i = topology.device_index(dev)
            return PeerLearner(
                METHODS[method],
                ctx.settings,
                model,
                ctx.device_dataset(i),
                ctx.train.view(ctx.local_tests[i]),
                ctx.training,
                ctx.profile.flops_train,
                evaluate_on,
                ctx.test,
            ).app(dev)

        cloud = {"cloud": NodeApp("cloud", "cloud")}
        apps = LazyApps(cloud, ctx.system.ids("device"), make, topology.is_device)
        s = ctx.config.federation
        coordinator = Decentralized(method, s.evaluate_every, s.deadline_s, s.eval_devices)
        return Assembly(apps, coordinator, SYNC)

    return assemble


for _name, _text in _DESCRIPTIONS.items():
    _links = () if METHODS[_name].prune else ("device-device",)  # pruned models go as masks
    register_algorithm(
        AlgorithmSpec(
            _name,
            _text,
            decentralized(_name),
            PeerSettings,
            roles=("peer",),
            links=_links,
            personalized=True,
            finetune="none",
        )
    )

"""The only place where names become objects: config -> a runnable Experiment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from fedge.aggregation import AGGREGATORS, INTERSERVER, SERVER_OPTIMIZERS, Score
from fedge.algorithms import (
    ALGORITHMS,
    AlgorithmSpec,
    Coordinator,
    EdgeServer,
    Exchange,
    FedAvg,
    LocalTrainer,
    trainer_app,
)
from fedge.algorithms.decentralized import METHODS, PeerLearner, PeerSettings
from fedge.algorithms.hierarchical import Evaluator
from fedge.core.errors import ConfigError
from fedge.core.node import NodeApp, derive_seed
from fedge.core.update import ModelState
from fedge.experiment.config import ExperimentConfig
from fedge.experiment.engines import node_set
from fedge.experiment.split_build import split_setup
from fedge.experiment.systems import build_system
from fedge.learning import (
    DATASETS,
    MODELS,
    PARTITIONERS,
    ArrayDataset,
    TrainConfig,
    build_model,
    class_histogram,
    evaluate,
    load_dataset,
    load_state,
    profile,
    state_of,
)
from fedge.learning._params import accepted_kwargs
from fedge.runtime import NodeSet, SimulatedTransport
from fedge.runtime.simulated import SYNC
from fedge.system.model import SystemModel

EVAL_BATCH = 256  # faster than larger batches on CPU for the reference CNNs
DEFAULT_VALIDATION_SIZE = 200
DEFAULT_LOCAL_TEST_FRACTION = 0.2


@dataclass
class Experiment:
    """Everything a run needs, built and validated."""

    config: ExperimentConfig
    train: ArrayDataset
    test: ArrayDataset
    parts: list[np.ndarray]
    model: nn.Module
    system: SystemModel
    transport: SimulatedTransport
    nodes: NodeSet
    coordinator: Coordinator
    initial_state: ModelState
    rng: np.random.Generator

    def partition_report(self) -> dict[str, Any]:
        hist = class_histogram(self.train.y.numpy(), self.parts, self.train.n_classes)
        devices = self.system.ids("device")
        return {
            "partition": self.config.data.partition,
            "class_names": list(self.train.class_names),
            "devices": {d: row.tolist() for d, row in zip(devices, hist, strict=True)},
        }


def _evaluator(model: nn.Module, test: ArrayDataset) -> Evaluator:
    def run(state: ModelState) -> dict[str, float]:
        load_state(model, state)
        return evaluate(model, test, batch_size=EVAL_BATCH).as_dict()

    return run


def check_names(cfg: ExperimentConfig) -> None:
    """Reject unknown registered names before anything is loaded or built."""
    ALGORITHMS.get(cfg.algorithm, "algorithm")
    DATASETS.get(cfg.data.dataset, "data.dataset")
    PARTITIONERS.get(cfg.data.partition, "data.partition")
    if ":" not in cfg.model.name and cfg.model.name not in MODELS:
        MODELS.get(cfg.model.name, "model.name")
    AGGREGATORS.get(cfg.federation.aggregator, "federation.aggregator")
    if cfg.algorithm == "msfl":
        INTERSERVER.get(cfg.federation.interserver, "federation.interserver")
    if cfg.federation.server_optimizer is not None:
        SERVER_OPTIMIZERS.get(cfg.federation.server_optimizer, "federation.server_optimizer")
    if cfg.algorithm == "fedprox" and cfg.training.proximal_mu <= 0:
        raise ConfigError(
            "training.proximal_mu",
            cfg.training.proximal_mu,
            "a number > 0 for algorithm 'fedprox' (e.g. 0.01)",
        )


def _check_edge_ids(cfg: ExperimentConfig, system: SystemModel) -> None:
    """Edges named in the config must exist in the built topology."""
    edges = system.ids("edge")
    unknown = [e for e in cfg.federation.malicious_edges if e not in edges]
    if unknown:
        allowed = "edge ids among " + ", ".join(edges)
        raise ConfigError("federation.malicious_edges", unknown, allowed)


def _data(cfg: ExperimentConfig) -> tuple[ArrayDataset, ArrayDataset]:
    params: dict[str, Any] = {}
    if cfg.data.root is not None:
        params["root"] = cfg.data.root
    if cfg.data.dataset == "synthetic":
        params["seed"] = derive_seed(cfg.seed, "synthetic")
    train, test = load_dataset(cfg.data.dataset, **params)
    if cfg.data.test_limit:
        test = test.subset(np.arange(min(cfg.data.test_limit, len(test))))
    return train, test


def _partition(cfg: ExperimentConfig, train: ArrayDataset, system: SystemModel) -> list[np.ndarray]:
    devices = system.ids("device")
    edges = system.ids("edge")
    groups = [edges.index(system.attachment(d, 0.0)) for d in devices]
    offered = {
        "alpha": cfg.data.alpha,
        "shards_per_client": cfg.data.shards_per_client,
        "beta": cfg.data.beta,
        "min_size": cfg.data.min_size,
        "groups": groups,
    }
    fn = PARTITIONERS.get(cfg.data.partition, "data.partition")
    rng = np.random.default_rng(derive_seed(cfg.seed, "partition"))
    return fn(train.y.numpy(), len(devices), rng, **accepted_kwargs(fn, offered))


def _train_config(cfg: ExperimentConfig) -> TrainConfig:
    """The ``[training]`` section; its keys are TrainConfig's fields."""
    return TrainConfig(**cfg.training.model_dump())


def _coordinator(cfg: ExperimentConfig, spec: AlgorithmSpec) -> Coordinator:
    """The algorithm's coordinator, given the federation settings it accepts."""
    fed = cfg.federation
    offered: dict[str, Any] = dict(
        clients_per_round=fed.clients_per_round,
        aggregator=fed.aggregator,
        aggregator_params=dict(fed.aggregator_params),
        deadline_s=fed.deadline_s,
        server_params=dict(fed.server_params),
        kappa1=fed.kappa1,
        kappa2=fed.kappa2,
        evaluate_every=fed.evaluate_every,
        interserver=fed.interserver,
        interserver_params=dict(fed.interserver_params),
    )
    if fed.server_optimizer is not None:
        offered["server_optimizer"] = fed.server_optimizer
    return spec.make(**{**spec.defaults, **accepted_kwargs(spec.make, offered)})


@dataclass(frozen=True)
class _EdgeKit:
    """What edge servers need from the build: evaluation, validation splits, FLOPs."""

    evaluator: Evaluator
    validation: list[ArrayDataset]
    model: nn.Module
    flops_forward: float


def _validator(model: nn.Module, data: ArrayDataset) -> Callable[[ModelState], Score]:
    evaluate_on = _evaluator(model, data)

    def score(state: ModelState) -> Score:
        result = evaluate_on(state)
        return Score(result["accuracy"], result["loss"])

    return score


def _edge_apps(
    cfg: ExperimentConfig, system: SystemModel, kit: _EdgeKit, exchange: bool
) -> dict[str, NodeApp]:
    """Edge servers that run FedAvg rounds over their attached devices (and exchange).

    Updates handed over by vehicles are scored by the exchange step when the edges exchange,
    else folded into the edge's next aggregation.
    """
    fed = cfg.federation
    inner = FedAvg(
        clients_per_round=fed.clients_per_edge or len(system.ids("device")),
        aggregator=fed.aggregator,
        aggregator_params=dict(fed.aggregator_params),
        deadline_s=fed.deadline_s,
        on_handover="redirect" if fed.handover else "drop",
    )
    server = EdgeServer(inner, kit.evaluator, absorb_handovers=not exchange)
    handlers = {"edge_train": server.train, "handover": server.handover}
    apps = {e: NodeApp(e, "edge", dict(handlers)) for e in system.ids("edge")}
    if not exchange:
        return apps
    poison = (fed.malicious_mode, fed.malicious_scale)
    for edge, val in zip(system.ids("edge"), kit.validation, strict=False):
        ex = Exchange(
            fed.interserver,
            dict(fed.interserver_params),
            _validator(kit.model, val),
            kit.evaluator,
            len(val) * kit.flops_forward,
            poison if edge in fed.malicious_edges else None,
        )
        apps[edge].on("get_model", ex.get_model).on("exchange", ex.exchange)
    return apps


def _split_validation(
    cfg: ExperimentConfig, train: ArrayDataset, n_edges: int, roles: tuple[str, ...]
) -> tuple[ArrayDataset, list[ArrayDataset]]:
    """Hold out ``validation_size`` training samples per edge, drawn IID (seeded).

    Interpretation: each edge's validation split is an IID sample of the training set held
    out before partitioning (the server's own labelled data in the MS-FL paper), so no device's
    data is shared. With ``data.validation_size`` set explicitly the split is held out for
    every algorithm, which keeps comparisons between frameworks on the same training data.
    """
    size = cfg.data.validation_size
    if size is None:
        size = DEFAULT_VALIDATION_SIZE if "exchange" in roles else 0
    if size == 0:
        return train, []
    if size * n_edges >= len(train):
        raise ConfigError(
            "data.validation_size", size, f"fewer than {len(train) // n_edges} samples per edge"
        )
    perm = np.random.default_rng(derive_seed(cfg.seed, "validation")).permutation(len(train))
    pools = [np.sort(perm[i * size : (i + 1) * size]) for i in range(n_edges)]
    return train.subset(np.sort(perm[size * n_edges :])), [train.subset(p) for p in pools]


def _local_test_split(
    cfg: ExperimentConfig, parts: list[np.ndarray], roles: tuple[str, ...]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each device's indices split into (train, own test); the test share is drawn at random
    (seeded per device) and holds ``round(fraction·n)`` samples."""
    fraction = cfg.data.local_test_fraction
    if "peer" not in roles:
        if fraction:
            raise ConfigError(
                "data.local_test_fraction", fraction, "0 for non-personalized algorithms"
            )
        return parts, [idx[:0] for idx in parts]
    fraction = DEFAULT_LOCAL_TEST_FRACTION if fraction is None else fraction
    trains, tests = [], []
    for i, idx in enumerate(parts):
        perm = np.random.default_rng(derive_seed(cfg.seed, "local_test", i)).permutation(idx)
        n_test = round(fraction * len(idx))
        tests.append(np.sort(perm[:n_test]))
        trains.append(np.sort(perm[n_test:]))
    return trains, tests


def _peer_apps(
    cfg: ExperimentConfig,
    spec: AlgorithmSpec,
    model: nn.Module,
    datasets: list[tuple[ArrayDataset, ArrayDataset]],
    test: ArrayDataset,
    flops_per_sample: float,
    devices: list[str],
) -> dict[str, NodeApp]:
    """Devices of a decentralized algorithm, each with its own train and test split."""
    settings = PeerSettings(**cfg.decentralized.model_dump())
    method = METHODS[spec.defaults["method"]]
    tcfg = _train_config(cfg)

    def evaluate_on(state: ModelState, data: ArrayDataset) -> dict[str, float]:
        load_state(model, state)
        return evaluate(model, data, batch_size=EVAL_BATCH).as_dict()

    return {
        dev: PeerLearner(
            method, settings, model, own, own_test, tcfg, flops_per_sample, evaluate_on, test
        ).app(dev)
        for dev, (own, own_test) in zip(devices, datasets, strict=True)
    }


def build(cfg: ExperimentConfig) -> Experiment:
    """Validate names, then load data, build the system, the apps and the coordinator."""
    check_names(cfg)
    spec = ALGORITHMS.get(cfg.algorithm, "algorithm")
    coordinator = _coordinator(cfg, spec)
    system = build_system(cfg.system, cfg.seed)
    _check_edge_ids(cfg, system)
    train, test = _data(cfg)
    train, validation = _split_validation(cfg, train, len(system.ids("edge")), spec.roles)
    parts = _partition(cfg, train, system)
    model = build_model(
        cfg.model.name, train.input_shape, train.n_classes, seed=derive_seed(cfg.seed, "init")
    )
    prof = profile(model, train.input_shape)
    flops = prof.flops_train
    tcfg = _train_config(cfg)
    devices = system.ids("device")
    own_parts, test_parts = _local_test_split(cfg, parts, spec.roles)
    apps: dict[str, NodeApp]
    if "peer" in spec.roles:
        pairs = zip(own_parts, test_parts, strict=True)
        splits = [(train.subset(a), train.subset(b)) for a, b in pairs]
        apps = _peer_apps(cfg, spec, model, splits, test, flops, devices)
    else:
        apps = {
            d: trainer_app(d, LocalTrainer(model, train.subset(idx), tcfg, flops))
            for d, idx in zip(devices, parts, strict=True)
        }
    apps["cloud"] = NodeApp("cloud", "cloud")
    if "split" in spec.roles:
        split_apps, coordinator = split_setup(
            cfg, spec, system, model, train, test, parts, tcfg, EVAL_BATCH
        )
        apps.update(split_apps)
    if "edge" in spec.roles:
        kit = _EdgeKit(_evaluator(model, test), validation, model, prof.flops_forward)
        apps.update(_edge_apps(cfg, system, kit, exchange="exchange" in spec.roles))
    nodes = node_set(cfg, apps, derive_seed(cfg.seed, "apps"))
    transport = SimulatedTransport(nodes, system, SYNC if "peer" in spec.roles else "cloud")
    return Experiment(
        config=cfg,
        train=train,
        test=test,
        parts=parts,
        model=model,
        system=system,
        transport=transport,
        nodes=nodes,
        coordinator=coordinator,
        initial_state=state_of(model),
        rng=np.random.default_rng(derive_seed(cfg.seed, "coordinator")),
    )

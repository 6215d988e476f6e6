"""The only place where names become objects: config -> a runnable Experiment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from fedge.aggregation import AGGREGATORS, SERVER_OPTIMIZERS
from fedge.algorithms import (
    ALGORITHMS,
    Coordinator,
    EdgeServer,
    FedAvg,
    LocalTrainer,
    trainer_app,
)
from fedge.algorithms.hierarchical import Evaluator
from fedge.core.errors import ConfigError
from fedge.core.node import NodeApp, derive_seed
from fedge.core.update import ModelState
from fedge.experiment.config import ExperimentConfig
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
from fedge.system.model import SystemModel

EVAL_BATCH = 256  # faster than larger batches on CPU for the reference CNNs


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
    if cfg.federation.server_optimizer is not None:
        SERVER_OPTIMIZERS.get(cfg.federation.server_optimizer, "federation.server_optimizer")
    if cfg.algorithm == "fedprox" and cfg.training.proximal_mu <= 0:
        raise ConfigError(
            "training.proximal_mu",
            cfg.training.proximal_mu,
            "a number > 0 for algorithm 'fedprox' (e.g. 0.01)",
        )


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
    t = cfg.training
    return TrainConfig(
        optimizer=t.optimizer,
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        epochs=t.epochs,
        steps=t.steps,
        batch_size=t.batch_size,
        proximal_mu=t.proximal_mu,
    )


def _coordinator(cfg: ExperimentConfig) -> Coordinator:
    """The algorithm's coordinator, given the federation settings it accepts."""
    spec = ALGORITHMS.get(cfg.algorithm, "algorithm")
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
    )
    if fed.server_optimizer is not None:
        offered["server_optimizer"] = fed.server_optimizer
    return spec.make(**{**spec.defaults, **accepted_kwargs(spec.make, offered)})


def _edge_apps(
    cfg: ExperimentConfig, system: SystemModel, evaluator: Evaluator
) -> dict[str, NodeApp]:
    """Edge servers that run FedAvg rounds over their attached devices."""
    fed = cfg.federation
    inner = FedAvg(
        clients_per_round=fed.clients_per_edge or len(system.ids("device")),
        aggregator=fed.aggregator,
        aggregator_params=dict(fed.aggregator_params),
        deadline_s=fed.deadline_s,
    )
    server = EdgeServer(inner, evaluator)
    return {e: NodeApp(e, "edge", {"edge_train": server.train}) for e in system.ids("edge")}


def build(cfg: ExperimentConfig) -> Experiment:
    """Validate names, then load data, build the system, the apps and the coordinator."""
    check_names(cfg)
    coordinator = _coordinator(cfg)
    system = build_system(cfg.system, cfg.seed)
    train, test = _data(cfg)
    parts = _partition(cfg, train, system)
    model = build_model(
        cfg.model.name, train.input_shape, train.n_classes, seed=derive_seed(cfg.seed, "init")
    )
    flops = profile(model, train.input_shape).flops_train
    tcfg = _train_config(cfg)
    apps: dict[str, NodeApp] = {
        d: trainer_app(d, LocalTrainer(model, train.subset(idx), tcfg, flops))
        for d, idx in zip(system.ids("device"), parts, strict=True)
    }
    apps["cloud"] = NodeApp("cloud", "cloud")
    if "edge" in ALGORITHMS.get(cfg.algorithm, "algorithm").roles:
        apps.update(_edge_apps(cfg, system, _evaluator(model, test)))
    transport = SimulatedTransport(NodeSet(apps, derive_seed(cfg.seed, "apps")), system)
    return Experiment(
        config=cfg,
        train=train,
        test=test,
        parts=parts,
        model=model,
        system=system,
        transport=transport,
        coordinator=coordinator,
        initial_state=state_of(model),
        rng=np.random.default_rng(derive_seed(cfg.seed, "coordinator")),
    )

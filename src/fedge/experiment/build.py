"""The only place where names become objects: config -> a runnable Experiment."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from torch import nn

from fedge.algorithms import ALGORITHMS, AlgorithmSpec, BuildContext, Coordinator
from fedge.algorithms.privacy import check_budget, check_privacy, local_transform
from fedge.core.errors import ConfigError
from fedge.core.node import NodeApp, derive_seed
from fedge.core.settings import Section
from fedge.core.update import ModelState
from fedge.experiment.config import ExperimentConfig
from fedge.experiment.engines import ENGINES, node_set, portable_paths
from fedge.experiment.systems import build_system
from fedge.learning import (
    DATASETS,
    MODELS,
    PARTITIONERS,
    ArrayDataset,
    build_model,
    class_histogram,
    load_dataset,
    profile,
    state_of,
)
from fedge.learning._params import accepted_kwargs
from fedge.runtime import NodeSet, SimulatedTransport
from fedge.system.model import SystemModel
from fedge.transforms import ClientPipeline, Transform, make_transform

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


def check_names(cfg: ExperimentConfig) -> AlgorithmSpec:
    """Reject unknown names and settings the algorithm cannot use, before any work; the
    sections' own parameters were checked when the config was validated."""
    return _checked(cfg)[0]


def _checked(cfg: ExperimentConfig) -> tuple[AlgorithmSpec, Section, dict[str, list[Transform]]]:
    """check_names' work, keeping what it built: the algorithm, its section with the
    variant's defaults, and the client pipeline's transforms per link."""
    spec = ALGORITHMS.get(cfg.algorithm, "algorithm")
    ENGINES.get(cfg.engine, "engine")
    DATASETS.get(cfg.data.dataset, "data.dataset")
    PARTITIONERS.get(cfg.data.partition, "data.partition")
    if ":" not in cfg.model.name and cfg.model.name not in MODELS:
        MODELS.get(cfg.model.name, "model.name")
    settings = spec.section(cfg)  # the variant's defaults applied and checked
    if spec.check is not None:
        spec.check(cfg)
    check_privacy(cfg, spec.name, spec.privacy)
    return spec, settings, client_pipeline(cfg, spec)


def client_pipeline(cfg: ExperimentConfig, spec: AlgorithmSpec) -> dict[str, list[Transform]]:
    """The ``[[compression]]`` transforms per link, checked against the algorithm's links."""
    links: dict[str, list[Transform]] = {}
    for i, entry in enumerate(cfg.compression):
        where = f"compression[{i}]"
        if entry.link not in spec.links:
            allowed = ", ".join(spec.links) or "none (its models do not travel as updates)"
            raise ConfigError(
                f"{where}.link", entry.link, f"a link of {cfg.algorithm!r}: {allowed}"
            )
        links.setdefault(entry.link, []).append(make_transform(entry.method, entry.params(), where))
    if cfg.privacy.mechanism == "local":  # local DP noise first: compression is post-processing
        uplink = next(link for link in spec.links if link in ("device-cloud", "device-edge"))
        links[uplink] = [local_transform(cfg.privacy), *links.get(uplink, [])]
    return links


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


def _split_validation(
    cfg: ExperimentConfig, train: ArrayDataset, n_edges: int, needed: bool
) -> tuple[ArrayDataset, list[ArrayDataset]]:
    """Hold out ``validation_size`` training samples per edge, drawn IID (seeded).

    Interpretation: each edge's validation split is an IID sample of the training set held
    out before partitioning (the server's own labelled data in the MS-FL paper), so no device's
    data is shared. With ``data.validation_size`` set explicitly the split is held out for
    every algorithm, which keeps comparisons between frameworks on the same training data.
    """
    size = cfg.data.validation_size
    if size is None:
        size = DEFAULT_VALIDATION_SIZE if needed else 0
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
    cfg: ExperimentConfig, parts: list[np.ndarray], personalized: bool
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each device's indices split into (train, own test); the test share is drawn at random
    (seeded per device) and holds ``round(fraction·n)`` samples."""
    fraction = cfg.data.local_test_fraction
    if not personalized:
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


def build(cfg: ExperimentConfig) -> Experiment:
    """Check the config, then load data, build the system, and let the algorithm assemble
    its apps and coordinator; the update pipeline and the engine come last."""
    spec, settings, links = _checked(cfg)
    system = build_system(cfg.system, cfg.seed)
    check_budget(cfg, spec.privacy, system)
    train, test = _data(cfg)
    train, validation = _split_validation(cfg, train, len(system.ids("edge")), spec.validation)
    parts = _partition(cfg, train, system)
    model = build_model(
        cfg.model.name, train.input_shape, train.n_classes, seed=derive_seed(cfg.seed, "init")
    )
    own_parts, local_tests = _local_test_split(cfg, parts, spec.personalized)
    ctx = BuildContext(
        config=cfg,
        settings=settings,
        training=cfg.training,
        system=system,
        train=train,
        test=test,
        parts=own_parts,
        local_tests=local_tests,
        validation=validation,
        model=model,
        profile=profile(model, train.input_shape),
        seed=cfg.seed,
    )
    assembly = spec.assemble(ctx)
    apps = assembly.apps
    if links:
        for app in apps.values():
            app.use(ClientPipeline(links, system.tier))
    rebuild = partial(node_apps, portable_paths(cfg))
    nodes = node_set(cfg, apps, derive_seed(cfg.seed, "apps"), rebuild)
    return Experiment(
        config=cfg,
        train=train,
        test=test,
        parts=parts,
        model=model,
        system=system,
        transport=SimulatedTransport(nodes, system, assembly.driver),
        nodes=nodes,
        coordinator=assembly.coordinator,
        initial_state=state_of(model),
        rng=np.random.default_rng(derive_seed(cfg.seed, "coordinator")),
    )


def node_apps(cfg: ExperimentConfig) -> dict[str, NodeApp]:
    """The node apps exactly as the local engine builds them (what a Ray worker runs)."""
    return build(cfg.model_copy(update={"engine": "local"})).nodes.apps

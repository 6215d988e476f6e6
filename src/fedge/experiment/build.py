"""The only place where names become objects: config -> a runnable Experiment."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from fedge.algorithms import ALGORITHMS, AlgorithmSpec, BuildContext, Coordinator
from fedge.algorithms.base import EVAL_BATCH
from fedge.algorithms.personalization import check_personalization, finetuning, personalize
from fedge.algorithms.privacy import check_budget, check_privacy, local_transform
from fedge.algorithms.secure_settings import check_secure
from fedge.core.errors import ConfigError, FedgeError
from fedge.core.node import LazyApps, Middleware, NodeApp, derive_seed, each_app
from fedge.core.population import StateStore
from fedge.core.registry import resolve_import_path
from fedge.core.settings import Section
from fedge.core.update import ModelState
from fedge.experiment.attack import (
    PlannedAttack,
    attack_links,
    attackers,
    backdoor_probe,
    check_attacks,
    choose_attackers,
    poison_data,
)
from fedge.experiment.config import DataConfig, ExperimentConfig, SyntheticConfig
from fedge.experiment.engines import ENGINES, node_set, portable_paths
from fedge.experiment.systems import build_system
from fedge.learning import (
    DATASETS,
    MODELS,
    PARTITIONERS,
    ArrayDataset,
    build_model,
    class_histogram,
    evaluate,
    load_dataset,
    load_state,
    profile,
    state_of,
)
from fedge.learning._params import accepted_kwargs
from fedge.learning.datasets import dataset_source
from fedge.learning.partition import PartitionError
from fedge.learning.synthetic import NAME as SYNTHETIC
from fedge.learning.synthetic import ClientParts, SyntheticFederation
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
    parts: Sequence[np.ndarray]
    model: nn.Module
    system: SystemModel
    transport: SimulatedTransport
    nodes: NodeSet
    coordinator: Coordinator
    initial_state: ModelState
    rng: np.random.Generator
    federation: SyntheticFederation | None = None
    """A federated dataset whose clients are the devices (None: ``parts`` of ``train``)."""
    data_source: dict[str, Any] = field(default_factory=dict)
    """Where the dataset was read from (folder, SHA-256 of each file); see dataset_source."""
    warnings: tuple[str, ...] = ()
    """Settings the config gives that its algorithm does not use (see unused_settings)."""
    attacks: list[PlannedAttack] = field(default_factory=list)
    """The ``[[attack]]`` entries with the nodes drawn for each."""
    probes: list[Callable[[ModelState], dict[str, float]]] = field(default_factory=list)
    """Extra figures of an evaluated global model (the backdoor's success rate)."""

    def partition_report(self) -> dict[str, Any]:
        if self.federation is not None:  # sizes only: labels would make every client
            sizes = self.federation.sizes
            return {
                "partition": "by_client",
                "clients": len(sizes),
                "samples": int(sizes.sum()),
                "samples_min": int(sizes.min()),
                "samples_mean": float(sizes.mean()),
                "samples_max": int(sizes.max()),
            }
        hist = class_histogram(self.train.y.numpy(), self.parts, self.train.n_classes)
        devices = self.system.ids("device")
        report: dict[str, Any] = {
            "partition": self.config.data.partition,
            "class_names": list(self.train.class_names),
            "devices": {d: row.tolist() for d, row in zip(devices, hist, strict=True)},
        }
        if self.attacks:
            report["attacks"] = [a.report() for a in self.attacks]
        return report

    def attackers(self) -> frozenset[str]:
        return attackers(self.attacks)


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
    if cfg.data.dataset == SYNTHETIC:
        _check_federated(cfg, spec)
    else:
        PARTITIONERS.get(cfg.data.partition, "data.partition")
        if cfg.data.synthetic != SyntheticConfig():
            raise ConfigError("data.synthetic", "set", f"only with data.dataset = {SYNTHETIC!r}")
    if ":" not in cfg.model.name and cfg.model.name not in MODELS:
        MODELS.get(cfg.model.name, "model.name")
    if ":" in cfg.model.name:
        check_model_path(cfg.model.name)
    settings = spec.section(cfg)  # the variant's defaults applied and checked
    if spec.check is not None:
        spec.check(cfg)
    check_personalization(cfg, spec)
    check_secure(cfg, spec.secure, "edge" in spec.roles)
    links = client_pipeline(cfg, spec)
    check_attacks(cfg, spec)
    check_privacy(cfg, spec.name, spec.privacy)
    return spec, settings, links


def _check_federated(cfg: ExperimentConfig, spec: AlgorithmSpec) -> None:
    """A federated dataset brings its own partition (one client per device) and no pooled
    training set to hold validation or personal test splits out of."""
    if cfg.data.partition != DataConfig().partition:  # a config saved with a run has it
        raise ConfigError(
            "data.partition",
            cfg.data.partition,
            f"left unset: {SYNTHETIC}'s clients are its partition",
        )
    if (
        spec.validation
        or spec.personalized
        or cfg.data.validation_size
        or cfg.data.local_test_fraction
    ):
        raise ConfigError(
            "data.dataset",
            SYNTHETIC,
            f"a pooled dataset for {cfg.algorithm!r} and for validation or personal test splits",
        )


def _federation(cfg: ExperimentConfig, n_devices: int) -> SyntheticFederation | None:
    if cfg.data.dataset != SYNTHETIC:
        return None
    s = cfg.data.synthetic
    return SyntheticFederation(
        n_devices,
        s.alpha,
        s.beta,
        derive_seed(cfg.seed, SYNTHETIC),
        max_samples=s.max_samples,
        test_clients=s.test_clients,
        test_samples=s.test_samples,
    )


def check_model_path(path: str) -> None:
    """A model named by import path must name an nn.Module class or a factory function."""
    obj = resolve_import_path(path, "model.name")
    allowed = "an nn.Module class or a function returning one, as 'package.module:attr'"
    if isinstance(obj, type) and not issubclass(obj, nn.Module):
        raise ConfigError("model.name", path, f"{allowed} ({obj.__name__} is not an nn.Module)")
    if not callable(obj):
        raise ConfigError("model.name", path, f"{allowed} (it is a {type(obj).__name__})")


def _model(cfg: ExperimentConfig, train: ArrayDataset) -> nn.Module:
    seed = derive_seed(cfg.seed, "init")
    try:
        return build_model(cfg.model.name, train.input_shape, train.n_classes, seed=seed)
    except ConfigError as exc:
        if exc.field != "model":
            raise
        raise ConfigError("model.name", exc.value, exc.allowed) from None
    except FedgeError as exc:  # the user's factory raised
        raise FedgeError(f"model.name: {exc}") from None


def _pipeline(app: NodeApp, links: dict[str, list[Transform]], system: SystemModel) -> None:
    """Install the client pipeline of ``links`` (an attacker's own, or everyone's) on ``app``."""
    if links:
        app.use(ClientPipeline(links, system.tier))


def _finish(app: NodeApp, finish: Mapping[str, Sequence[Middleware]]) -> None:
    """Install the middleware the assembly wants last on ``app`` (after the client pipeline)."""
    for middleware in finish.get(app.node_id, ()):
        app.use(middleware)


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
    return train, _limited(cfg, test)


def _limited(cfg: ExperimentConfig, test: ArrayDataset) -> ArrayDataset:
    if cfg.data.test_limit:
        test = test.subset(np.arange(min(cfg.data.test_limit, len(test))))
    return test


def _data_source(cfg: ExperimentConfig) -> dict[str, Any]:
    params = {"root": cfg.data.root} if cfg.data.root is not None else {}
    return dataset_source(cfg.data.dataset, **params)


def check_federation(cfg: ExperimentConfig, spec: AlgorithmSpec, system: SystemModel) -> None:
    """More clients a round than devices is refused (never clamped), before data is loaded."""
    settings = getattr(cfg, spec.settings.section)
    wanted = getattr(settings, "clients_per_round", None)
    if wanted is None or "clients_per_round" in spec.unused:
        return
    devices = len(system.ids("device"))
    if wanted > devices:
        raise ConfigError(
            f"{spec.settings.section}.clients_per_round",
            wanted,
            f"at most system.devices = {devices} (the devices there are to sample from)",
        )


def check_samples(cfg: ExperimentConfig, train: ArrayDataset, devices: int) -> None:
    """Every device must get samples: refuse more devices than training samples, or a
    ``data.min_size`` the training set cannot give every device."""
    n = len(train)
    if devices > n:
        raise ConfigError(
            "system.devices",
            devices,
            f"at most the {n} training samples of {cfg.data.dataset!r} (one or more per "
            f"device); a larger population needs a federated dataset ({SYNTHETIC!r})",
        )
    fn = PARTITIONERS.get(cfg.data.partition, "data.partition")
    if "min_size" in accepted_kwargs(fn, {"min_size": 0}) and cfg.data.min_size * devices > n:
        raise ConfigError(
            "data.min_size",
            cfg.data.min_size,
            f"at most {n // devices}: {n} training samples shared by system.devices = {devices}",
        )


def _check_nonempty(cfg: ExperimentConfig, parts: list[np.ndarray], devices: list[str]) -> None:
    empty = [d for d, idx in zip(devices, parts, strict=True) if len(idx) == 0]
    if empty:
        raise ConfigError(
            "data.partition",
            cfg.data.partition,
            f"a partition that gives every device samples; {len(empty)} of {len(devices)} "
            f"devices got none (e.g. {empty[0]}): lower system.devices or change the "
            "partition's parameters",
        )


def unused_settings(cfg: ExperimentConfig, spec: AlgorithmSpec) -> tuple[str, ...]:
    """What the config sets that its algorithm does not read: keys of its own section that
    the algorithm declares unused, and whole sections of other algorithms. Warned about
    rather than refused, so one config can serve ``fedge compare --vary algorithm=...``."""
    own = spec.settings.section
    section = getattr(cfg, own)
    lines = [
        f"{own}.{key} is set but algorithm {cfg.algorithm!r} does not use it"
        for key in spec.unused
        if key in section.model_fields_set
    ]
    others = sorted({ALGORITHMS.get(n).settings.section for n in ALGORITHMS} - {own})
    for name in others:
        given = getattr(cfg, name, None)
        if given is not None and given.model_fields_set:
            fields = type(given).model_fields
            named = sorted(fields[k].alias or k for k in given.model_fields_set)
            keys = ", ".join(f"{name}.{k}" for k in named)
            lines.append(f"{keys} set but algorithm {cfg.algorithm!r} does not read [{name}]")
    return tuple(lines)


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
    check_samples(cfg, train, len(devices))
    try:
        parts: list[np.ndarray] = fn(
            train.y.numpy(), len(devices), rng, **accepted_kwargs(fn, offered)
        )
    except ConfigError as exc:  # the partitioner names its parameter; the user wrote data.<it>
        field_name = f"data.{exc.field}" if exc.field in offered else exc.field
        raise ConfigError(field_name, exc.value, exc.allowed) from None
    except PartitionError as exc:
        raise PartitionError(
            f"data.partition: {exc} (system.devices = {len(devices)}, data.min_size = "
            f"{cfg.data.min_size}, {len(train)} training samples)"
        ) from None
    _check_nonempty(cfg, parts, devices)
    return parts


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
    return train.view(np.sort(perm[size * n_edges :])), [train.subset(p) for p in pools]


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


@dataclass(frozen=True)
class SharedData:
    """The loaded (train, test) arrays as numpy, for the workers that build the apps again.

    The Ray engine puts the workers' factory (which carries this) into the object store
    once; a worker maps its numpy arrays from shared memory (read-only, no copy), so a
    pool of workers holds one copy of the dataset, not one per actor. On the driver the
    arrays are views of the loaded tensors.
    """

    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    meta: tuple[int, str, tuple[str, ...]]

    @classmethod
    def of(cls, train: ArrayDataset, test: ArrayDataset) -> SharedData:
        arrays = (train.x.numpy(), train.y.numpy(), test.x.numpy(), test.y.numpy())
        return cls(arrays, (train.n_classes, train.name, train.class_names))

    def datasets(self) -> tuple[ArrayDataset, ArrayDataset]:
        """(train, test) over these arrays (torch tensors sharing their memory)."""
        n_classes, name, names = self.meta
        with warnings.catch_warnings():  # read-only shared memory: nothing writes to it
            warnings.simplefilter("ignore", UserWarning)
            x, y, tx, ty = (torch.from_numpy(a) for a in self.arrays)
        return ArrayDataset(x, y, n_classes, name, names), ArrayDataset(
            tx, ty, n_classes, name, names
        )


def build(cfg: ExperimentConfig, data: SharedData | None = None) -> Experiment:
    """Check the config, then load data, build the system, and let the algorithm assemble
    its apps and coordinator; the update pipeline and the engine come last."""
    spec, settings, links = _checked(cfg)
    system = build_system(cfg.system, cfg.seed)
    check_federation(cfg, spec, system)
    check_budget(cfg, spec.privacy, system)
    plans = choose_attackers(check_attacks(cfg, spec), system, cfg.seed)
    federation = _federation(cfg, len(system.ids("device")))
    parts: Sequence[np.ndarray]
    if federation is None:
        source = _data_source(cfg)
        train, test = _data(cfg) if data is None else data.datasets()
        loaded = SharedData.of(train, test)
        needs_validation = spec.validation or cfg.defence.detection != "none"
        n_edges = len(system.ids("edge"))
        train, validation = _split_validation(cfg, train, n_edges, needs_validation)
        parts = _partition(cfg, train, system)
    else:  # the clients are the devices, made on demand; no pooled training set
        source = {"dataset": SYNTHETIC, "generated": True}
        train, test, validation = federation.no_pool(), _limited(cfg, federation.test_set()), []
        parts = ClientParts(federation)
    model = _model(cfg, train)
    own_parts: Sequence[np.ndarray]
    local_tests: Sequence[np.ndarray]
    if federation is None:
        own_parts, local_tests = _local_test_split(
            cfg, list(parts), spec.personalized or finetuning(cfg)
        )
    else:
        own_parts, local_tests = parts, ClientParts(federation, empty=True)
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
        clients=None if federation is None else federation.clients(),
        attackers=attackers(plans),
    )
    assembly = personalize(ctx, spec, spec.assemble(ctx))
    apps = assembly.apps
    poison_data(plans, apps, train, cfg.seed)
    own_links = attack_links(plans, spec, links)
    each_app(apps, lambda app: _pipeline(app, own_links.get(app.node_id, links), system))
    if assembly.finish:
        each_app(apps, lambda app: _finish(app, assembly.finish))
    _state_budget(cfg, apps)
    shared = loaded if federation is None else None
    rebuild = partial(node_apps, portable_paths(cfg), shared)
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
        federation=federation,
        data_source=source,
        warnings=unused_settings(cfg, spec),
        attacks=plans,
        probes=_probes(plans, test, model),
    )


def _state_budget(cfg: ExperimentConfig, apps: Mapping[str, NodeApp]) -> None:
    """``[population] state_memory_mb``: device state beyond it goes to disk (the local and
    Ray engines; a gRPC device process holds its own devices' state)."""
    budget = cfg.population.budget_bytes()
    if budget is None:
        return
    if cfg.engine == "grpc":
        allowed = "unset with engine 'grpc' (each device process holds its own state)"
        raise ConfigError("population.state_memory_mb", cfg.population.state_memory_mb, allowed)
    if not isinstance(apps, LazyApps):
        allowed = f"unset for algorithm {cfg.algorithm!r} (it builds every device app up front)"
        raise ConfigError("population.state_memory_mb", cfg.population.state_memory_mb, allowed)
    apps.limit(budget, StateStore())


def _probes(
    plans: list[PlannedAttack], test: ArrayDataset, model: nn.Module
) -> list[Callable[[ModelState], dict[str, float]]]:
    def accuracy(state: ModelState, data: ArrayDataset) -> float:
        load_state(model, state)
        return evaluate(model, data, batch_size=EVAL_BATCH).accuracy

    probe = backdoor_probe(plans, test, accuracy)
    return [] if probe is None else [probe]


def node_apps(cfg: ExperimentConfig, data: SharedData | None = None) -> Mapping[str, NodeApp]:
    """The node apps exactly as the local engine builds them (what a Ray worker runs), on
    the driver's loaded ``data`` when given (else loaded again)."""
    return build(cfg.model_copy(update={"engine": "local"}), data).nodes.apps

"""``[federation]``: the settings of the server-based algorithms, and their assembly.

One section serves the FedAvg family, hierarchical FL, single-server and multi-server FL;
each registers the hook here that builds its node apps and coordinator from it. Every
parameter dictionary (aggregator, server optimizer, inter-server rule) is checked when the
section is validated, before any data is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import Field, model_validator

from fedge.aggregation import INTERSERVER, SERVER_OPTIMIZERS, Score, make_server_optimizer
from fedge.aggregation._params import check_params
from fedge.aggregation.defence import DefenceSettings, defence_stages
from fedge.aggregation.mean import check_aggregator
from fedge.aggregation.pipeline import ServerPipeline
from fedge.algorithms.apps import LocalTrainer, trainer_app
from fedge.algorithms.base import (
    AlgorithmSpec,
    Assembly,
    BuildContext,
    Check,
    register_algorithm,
)
from fedge.algorithms.fedavg import FedAvg
from fedge.algorithms.hierarchical import EdgeServer, HierarchicalFL, kappa1_bounds
from fedge.algorithms.multiserver import Exchange, MultiServerFL
from fedge.algorithms.privacy import Tier, make_privacy, strata
from fedge.algorithms.secure_settings import SecureAggregationSettings, scale_bits_for
from fedge.algorithms.selection import SelectionHint, make_selector
from fedge.core.errors import ConfigError
from fedge.core.node import LazyApps, NodeApp, derive_seed, each_app
from fedge.core.settings import Section
from fedge.core.update import ModelState
from fedge.learning import ArrayDataset

if TYPE_CHECKING:
    from fedge.algorithms.secure_settings import SecureRound

Params = dict[str, float | int | str]


class FederationSettings(Section):
    """Server-based federated learning: sampling, aggregation, edges, inter-server rules."""

    section: ClassVar[str] = "federation"

    clients_per_round: int = Field(10, ge=1)
    clients_per_edge: int = Field(0, ge=0, description="devices an edge samples; 0: all")
    kappa1: int = Field(1, ge=1, description="local rounds between edge aggregations")
    kappa2: int = Field(1, ge=1, description="edge rounds between cloud aggregations")
    aggregator: str = "mean"
    aggregator_params: Params = Field(default_factory=dict)
    server_optimizer: str | None = None
    server_params: dict[str, float] = Field(default_factory=dict)
    deadline_s: float | None = Field(None, gt=0)
    evaluate_every: int = Field(1, ge=1)
    eval_devices: int = Field(
        0,
        ge=0,
        description="personalized algorithms: devices (drawn at random each evaluation) whose "
        "own models are evaluated; 0: every device",
    )
    interserver: str = "spaa"
    handover: bool = Field(True, description="edges keep updates of vehicles that moved in")
    interserver_params: Params = Field(default_factory=dict)
    selection: str = Field(
        "random", description="random | poisson | deadline_aware | power_of_choice"
    )
    selection_params: Params = Field(default_factory=dict)
    kappa1_rule: str = Field("fixed", description="fixed | adacomm (hierarchical FL)")
    kappa1_params: Params = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        for key in ("malicious_edges", "malicious_mode", "malicious_scale"):
            if isinstance(data, dict) and key in data:
                allowed = (
                    "nothing: a malicious edge is an [[attack]] table now, e.g. "
                    "kind = 'gaussian', std = 10.0, relative = true, replace = true, "
                    "tier = 'edge', nodes = ['edge1'] (or kind = 'scaled', scale = -5.0)"
                )
                raise ConfigError(f"federation.{key}", data[key], allowed)
        return data

    @model_validator(mode="after")
    def _check_params(self) -> FederationSettings:
        check_aggregator(self.aggregator, self.aggregator_params)
        make_selector(
            self.selection, self.selection_params, self.clients_per_round, self.deadline_s
        )
        kappa1_bounds(self.kappa1_rule, self.kappa1_params, self.kappa1)
        if self.server_optimizer is not None:  # else the algorithm's variant names it
            self._check_server_optimizer(self.server_optimizer)
        rule = INTERSERVER.get(self.interserver, "federation.interserver")
        where = f"federation.interserver_params ({self.interserver})"
        check_params(where, rule, self.interserver_params, skip=3)
        return self

    def _check_server_optimizer(self, optimizer: str) -> None:
        SERVER_OPTIMIZERS.get(optimizer, "federation.server_optimizer")
        try:
            make_server_optimizer(optimizer, **self.server_params)
        except ConfigError as exc:
            field = f"federation.server_params ({exc.field})"
            raise ConfigError(field, exc.value, exc.allowed) from None


def device_apps(ctx: BuildContext, eager: Mapping[str, NodeApp] | None = None) -> LazyApps:
    """Devices that train the received model on their own samples and send it back, each
    made the first time it is reached (a large population costs what its cohorts touch),
    beside the ``eager`` apps (edges) and the cloud's."""
    flops = ctx.profile.flops_train
    model, tcfg = ctx.model, ctx.training
    topology = ctx.system.topology

    def make(device: str) -> NodeApp:
        data = ctx.device_dataset(topology.device_index(device))
        return trainer_app(device, LocalTrainer(model, data, tcfg, flops))

    apps = {**(eager or {}), "cloud": NodeApp("cloud", "cloud")}
    return LazyApps(apps, ctx.system.ids("device"), make, topology.is_device)


def validator(ctx: BuildContext, data: ArrayDataset) -> Callable[[ModelState], Score]:
    """Scores a model on an edge's validation split (accuracy, loss)."""
    evaluate_on = ctx.evaluator(data)

    def score(state: ModelState) -> Score:
        result = evaluate_on(state)
        return Score(result["accuracy"], result["loss"])

    return score


def validation_loss(
    ctx: BuildContext, data: ArrayDataset | None
) -> Callable[[ModelState], float] | None:
    """A model's loss on ``data`` (None without a split)."""
    if data is None or len(data) == 0:
        return None
    evaluate_on = ctx.evaluator(data)
    return lambda state: float(evaluate_on(state)["loss"])


def server_validation(ctx: BuildContext) -> ArrayDataset | None:
    """The cloud's validation split: every held-out split together (``data.validation_size``
    per edge), None when nothing was held out."""
    if not ctx.validation:
        return None
    first = ctx.validation[0]
    x = torch.cat([v.x for v in ctx.validation])
    y = torch.cat([v.y for v in ctx.validation])
    return ArrayDataset(x, y, first.n_classes, first.name, first.class_names)


def defend(
    ctx: BuildContext, pipeline: ServerPipeline, tier: str, validation: ArrayDataset | None
) -> None:
    """Put the ``[defence]`` stages of ``tier`` in front of ``pipeline``'s aggregator."""
    settings: DefenceSettings = getattr(ctx.config, "defence", DefenceSettings())
    if settings.active:
        stages = defence_stages(settings, tier, validation_loss(ctx, validation))
        pipeline.prepare_stages.extend(stages)


def with_cloud(apps: dict[str, NodeApp], coordinator: Any) -> Assembly:
    """The apps plus an empty cloud app (the coordinator runs beside it)."""
    return Assembly({**apps, "cloud": NodeApp("cloud", "cloud")}, coordinator)


def secure_aggregation(ctx: BuildContext, cohort: int) -> SecureRound | None:
    """The server side of secure (or homomorphic) aggregation for cohorts of up to
    ``cohort`` devices, when ``[secure_aggregation]`` is enabled; the ring is checked against
    the cohort and the largest device weight (its sample count) here, before any round."""
    s: SecureAggregationSettings = ctx.config.secure_aggregation
    if not s.enabled:
        return None
    from fedge.algorithms.secure import SecureAggregation

    largest = float(max((len(idx) for idx in ctx.parts), default=1))
    if s.max_weight is not None and s.max_weight < largest:
        raise ConfigError(
            "secure_aggregation.max_weight",
            s.max_weight,
            f">= {largest:g} (the largest device's sample count, its FedAvg weight)",
        )
    scale = scale_bits_for(s, cohort, s.max_weight or largest)
    if s.mode == "paillier":
        from fedge.algorithms.homomorphic import HomomorphicAggregation

        return HomomorphicAggregation(s, scale)
    return SecureAggregation(s, scale, derive_seed(ctx.seed, "secagg"))


def secured(ctx: BuildContext, assembly: Assembly) -> Assembly:
    """The assembly with the devices' secure-aggregation handlers and masking middleware
    (unchanged when ``[secure_aggregation]`` is off)."""
    s: SecureAggregationSettings = ctx.config.secure_aggregation
    if not s.enabled:
        return assembly
    devices = ctx.system.ids("device")
    if s.mode == "paillier":
        from fedge.algorithms.homomorphic import HEDevice, install_he_device

        keeper = HEDevice(s.key_bits)
        each_app(assembly.apps, lambda app: _on_device(app, install_he_device, keeper))
        return replace(assembly, finish={d: [keeper.encrypt] for d in devices})
    from fedge.algorithms.secure import SecAggDevice, install_device

    device = SecAggDevice()
    each_app(assembly.apps, lambda app: _on_device(app, install_device, device))
    return replace(assembly, finish={d: [device.mask] for d in devices})


def _on_device(app: NodeApp, install: Callable[[NodeApp, Any], None], side: Any) -> None:
    if app.tier == "device":
        install(app, side)


def _optimizer(s: FederationSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"server_params": dict(s.server_params)}
    if s.server_optimizer is not None:
        out["server_optimizer"] = s.server_optimizer
    return out


def hierarchy_settings(s: FederationSettings) -> dict[str, Any]:
    """The cloud coordinator's part of ``[federation]`` in the hierarchical algorithms: the
    rounds per level and how a server aggregates and waits."""
    return {
        "kappa1": s.kappa1,
        "kappa2": s.kappa2,
        "aggregator": s.aggregator,
        "aggregator_params": dict(s.aggregator_params),
        "deadline_s": s.deadline_s,
    }


def _selection(ctx: BuildContext) -> dict[str, Any]:
    """Client selection as configured, with what selectors need to know of the devices."""
    s: FederationSettings = ctx.settings
    examples = {d: len(idx) for d, idx in zip(ctx.system.ids("device"), ctx.parts, strict=True)}
    hint = SelectionHint(examples, ctx.training, ctx.profile.flops_train)
    return {
        "selection": s.selection,
        "selection_params": dict(s.selection_params),
        "selection_hint": hint,
    }


FAMILY_DP = ("cloud",)
HIERARCHICAL_DP = ("edge", "cloud")
EDGE_DP = ("edge",)
"""Where each algorithm can add central DP noise (``privacy.noise_at``; first: default)."""


def _privacy(ctx: BuildContext, seats: tuple[str, ...], tier: Tier) -> dict[str, Any]:
    """The DP mechanism of the node at ``tier`` (``fedge.algorithms.privacy``), if any."""
    s: FederationSettings = ctx.settings
    strata_ = strata(ctx.config, ctx.system) if tier == "edges" else ()
    privacy = make_privacy(ctx.config.privacy, seats, s, tier, strata_)
    return {} if privacy is None else {"privacy": privacy}


def assemble_fedavg(ctx: BuildContext) -> Assembly:
    """Devices attach to the cloud; the cloud runs FedAvg (or its family) over them."""
    s: FederationSettings = ctx.settings
    coordinator = FedAvg(
        clients_per_round=s.clients_per_round,
        aggregator=s.aggregator,
        aggregator_params=dict(s.aggregator_params),
        deadline_s=s.deadline_s,
        **_optimizer(s),
        **_selection(ctx),
        secure=secure_aggregation(ctx, min(s.clients_per_round, len(ctx.parts))),
        **_privacy(ctx, FAMILY_DP, "cloud"),
    )
    defend(ctx, coordinator.pipeline, "cloud", server_validation(ctx))
    return secured(ctx, Assembly(device_apps(ctx), coordinator))


def edge_apps(
    ctx: BuildContext, exchange: bool, seats: tuple[str, ...] = EDGE_DP
) -> dict[str, NodeApp]:
    """Edge servers that run FedAvg rounds over their attached devices (and exchange).

    Updates handed over by vehicles are scored by the exchange step when the edges exchange,
    else folded into the edge's next aggregation.
    """
    s: FederationSettings = ctx.settings
    edges = ctx.system.ids("edge")
    evaluate = ctx.evaluator()
    apps: dict[str, NodeApp] = {}
    cohort = s.clients_per_edge or len(ctx.system.ids("device"))
    selection = _selection(ctx)  # the devices' hint, built once for every edge
    for i, edge in enumerate(edges):  # one server per edge: each keeps its own defence state
        inner = FedAvg(
            clients_per_round=cohort,
            aggregator=s.aggregator,
            aggregator_params=dict(s.aggregator_params),
            deadline_s=s.deadline_s,
            on_handover="redirect" if s.handover else "drop",
            **selection,
            secure=secure_aggregation(ctx, min(cohort, len(ctx.parts))),
            **_privacy(ctx, seats, "edge"),
        )
        own = ctx.validation[i] if i < len(ctx.validation) else None
        defend(ctx, inner.pipeline, "edge", own)
        server = EdgeServer(inner, evaluate, absorb_handovers=not exchange)
        handlers = {"edge_train": server.train, "handover": server.handover}
        apps[edge] = NodeApp(edge, "edge", dict(handlers), offload=_offload(inner, handlers))
    if not exchange:
        return apps
    for edge, val in zip(edges, ctx.validation, strict=False):
        ex = Exchange(
            s.interserver,
            dict(s.interserver_params),
            validator(ctx, val),
            evaluate,
            len(val) * ctx.profile.flops_forward,
            report=edge not in ctx.attackers,
        )
        apps[edge].on("get_model", ex.get_model).on("exchange", ex.exchange)
    return apps


def _offload(inner: FedAvg, handlers: Mapping[str, object]) -> frozenset[str]:
    """The edge's kinds an engine may run elsewhere with their devices: all of them when
    the edge keeps its whole run state in its node state, none when its aggregation keeps
    some of its own (defence stages' flags, a server optimizer's moments)."""
    pipeline = inner.pipeline
    own_state = pipeline.prepare_stages or pipeline.finalize_stages or pipeline.optimizer
    return frozenset() if own_state else frozenset(handlers)


def assemble_hierarchical(ctx: BuildContext) -> Assembly:
    """HierFAVG: devices -> edges (FedAvg every kappa1 local rounds) -> cloud."""
    s: FederationSettings = ctx.settings
    coordinator = HierarchicalFL(
        **hierarchy_settings(s),
        kappa1_rule=s.kappa1_rule,
        kappa1_params=dict(s.kappa1_params),
        **_privacy(ctx, HIERARCHICAL_DP, "edges"),
    )
    defend(ctx, coordinator.pipeline, "cloud", server_validation(ctx))
    edges = edge_apps(ctx, exchange=False, seats=HIERARCHICAL_DP)
    return secured(ctx, Assembly(device_apps(ctx, edges), coordinator))


def multiserver(exchange: bool) -> Callable[[BuildContext], Assembly]:
    """Every edge trains its devices; with ``exchange`` (MS-FL) edges then mix their
    neighbours' models, without it (single-server FL) they stay isolated."""

    def assemble(ctx: BuildContext) -> Assembly:
        s: FederationSettings = ctx.settings
        coordinator = MultiServerFL(
            kappa1=s.kappa1,
            kappa2=s.kappa2,
            deadline_s=s.deadline_s,
            exchange=exchange,
            evaluate_every=s.evaluate_every,
        )
        return secured(ctx, Assembly(device_apps(ctx, edge_apps(ctx, exchange)), coordinator))

    return assemble


def _fixed_kappa1(config: Any) -> None:
    rule = config.federation.kappa1_rule
    if rule != "fixed":
        allowed = "'fixed' for multi-server and single-server FL (adaptive kappa1: hierarchical)"
        raise ConfigError("federation.kappa1_rule", rule, allowed)


def _needs_mu(config: Any) -> None:
    if config.training.proximal_mu <= 0:
        allowed = "a number > 0 for algorithm 'fedprox' (e.g. 0.01)"
        raise ConfigError("training.proximal_mu", config.training.proximal_mu, allowed)


EDGE_ONLY = ("clients_per_edge", "kappa1", "kappa2", "kappa1_rule", "kappa1_params", "handover")
"""[federation] keys that only algorithms with edge servers read."""
EXCHANGE_ONLY = ("interserver", "interserver_params")
"""[federation] keys that only multi-server FL (edges exchanging models) reads."""
CLOUD_ONLY = ("clients_per_round", "server_optimizer", "server_params")
"""[federation] keys that only the FedAvg family (devices sampled by the cloud) reads."""


def _family(name: str, description: str, check: Check | None = None, **defaults: Any) -> None:
    register_algorithm(
        AlgorithmSpec(
            name,
            description,
            assemble_fedavg,
            FederationSettings,
            defaults,
            links=("device-cloud",),
            check=check,
            unused=EDGE_ONLY + EXCHANGE_ONLY,
            secure=True,
            privacy=FAMILY_DP,
        )
    )


_family(
    "fedavg", "FedAvg (McMahan et al. 2017), devices talk to the cloud", server_optimizer="none"
)
_family(
    "fedprox",
    "FedProx: FedAvg with a proximal term mu (training.proximal_mu)",
    _needs_mu,
    server_optimizer="none",
)
_family("fedavgm", "FedAvg with server momentum", server_optimizer="fedavgm")
_family("fedadam", "FedAvg with the Adam server optimizer", server_optimizer="fedadam")
_family("fedyogi", "FedAvg with the Yogi server optimizer", server_optimizer="fedyogi")
register_algorithm(
    AlgorithmSpec(
        "hierarchical",
        "HierFAVG: edges aggregate every kappa1 local rounds, the cloud every kappa2 edge rounds",
        assemble_hierarchical,
        FederationSettings,
        roles=("edge",),
        links=("device-edge", "edge-cloud"),
        unused=EXCHANGE_ONLY + CLOUD_ONLY,
        secure=True,
        privacy=HIERARCHICAL_DP,
    )
)
register_algorithm(
    AlgorithmSpec(
        "msfl",
        "Multi-server FL among RSUs: each mixes its neighbours' models with WA/BA/SA/DWAA/SPAA",
        multiserver(exchange=True),
        FederationSettings,
        roles=("edge", "exchange"),
        links=("device-edge", "edge-edge"),
        validation=True,
        check=_fixed_kappa1,
        finetune="none",
        unused=(*CLOUD_ONLY, "kappa1_rule", "kappa1_params"),
        secure=True,
        privacy=EDGE_DP,
    )
)
register_algorithm(
    AlgorithmSpec(
        "single_server",
        "Isolated FL at each edge: no exchange with peers or the cloud",
        multiserver(exchange=False),
        FederationSettings,
        roles=("edge",),
        links=("device-edge",),
        check=_fixed_kappa1,
        finetune="none",
        unused=EXCHANGE_ONLY + CLOUD_ONLY + ("kappa1_rule", "kappa1_params"),
        secure=True,
        privacy=EDGE_DP,
    )
)

"""Experiment configuration: TOML -> frozen, validated config, with ``--set`` overrides.

Every section forbids unknown keys; every error names the dotted field, the bad value
and what is allowed, and is raised before any work starts. The sections of the library's
parts are declared once, next to the code they configure (``[training]`` in
``fedge.learning``, ``[federation]``, ``[decentralized]``, ``[split]`` in
``fedge.algorithms``, ``[grpc]`` in ``fedge.runtime``); the sections here are the
experiment's own (data, model, system, engines, output).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedge.aggregation.defence import DefenceSettings
from fedge.algorithms.asynchronous import AsyncSettings
from fedge.algorithms.clustered import ClusterSettings
from fedge.algorithms.decentralized import PeerSettings
from fedge.algorithms.federation import FederationSettings
from fedge.algorithms.personalization import PersonalizationSettings
from fedge.algorithms.privacy import PrivacySettings
from fedge.algorithms.secure_settings import SecureAggregationSettings
from fedge.algorithms.split import SplitSettings
from fedge.caching.settings import CachingSettings
from fedge.core.errors import ConfigError, FedgeError
from fedge.core.population import PopulationSettings
from fedge.core.settings import config_error
from fedge.learning.training import TrainConfig
from fedge.runtime.grpc_settings import GrpcSettings
from fedge.transforms.attacks import AttackConfig

Positive = Field(gt=0)


class Section(BaseModel):
    """A section of the experiment's own (nested paths are named by the whole config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(Section):
    """``[data.synthetic]``: Synthetic(alpha, beta) of FedProx / LEAF (``leaf_synthetic``),
    one client per device, each generated on demand (``fedge.learning.synthetic``)."""

    alpha: float = Field(1.0, ge=0, description="spread of the clients' local models")
    beta: float = Field(1.0, ge=0, description="spread of the clients' local data")
    max_samples: int = Field(0, ge=0, description="cap on a client's samples; 0: none")
    test_clients: int = Field(
        100, ge=1, description="clients whose fresh samples form the test set"
    )
    test_samples: int = Field(20, ge=1, description="test samples per test client")


class DataConfig(Section):
    dataset: str = "fashion_mnist"
    root: str | None = None
    partition: str = "dirichlet"
    alpha: float = Field(0.5, gt=0)
    shards_per_client: int = Field(2, ge=1)
    beta: float = Field(0.5, gt=0)
    min_size: int = Field(10, ge=1)
    test_limit: int = Field(0, ge=0, description="evaluate on the first N test samples (0: all)")
    validation_size: int | None = Field(
        None, ge=0, description="held-out samples per edge; None: 200 when the algorithm needs it"
    )
    local_test_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="share of each device's data kept as its own test split; "
        "None: 0.2 for personalized algorithms, else 0",
    )
    synthetic: SyntheticConfig = SyntheticConfig()


class ModelConfig(Section):
    name: str = "fedavg_cnn"


class WanConfig(Section):
    """Edge <-> cloud link; a latency trace (file or inline points) replaces ``latency_ms``."""

    bandwidth_mbps: float = Field(100.0, gt=0)
    latency_ms: float = Field(50.0, ge=0)
    latency_trace: str | None = Field(
        None, description="CSV file with the columns time_s,latency_s (one-way latency)"
    )
    latency_points: list[tuple[float, float]] = Field(
        default_factory=list, description="inline trace: [[time_s, latency_s], ...]"
    )


class BackhaulConfig(Section):
    """Edge <-> edge link."""

    bandwidth_mbps: float = Field(1000.0, gt=0)
    latency_ms: float = Field(5.0, ge=0)


class WirelessConfig(Section):
    bandwidth_mhz: float = Field(1.0, gt=0)
    device_tx_power_w: float = Field(0.2, gt=0)
    edge_tx_power_w: float = Field(1.0, gt=0)
    noise_dbm_per_hz: float = -174.0


class DeviceComputeConfig(Section):
    gflops_min: float = Field(5.0, gt=0)
    gflops_max: float = Field(20.0, gt=0)
    memory_gib: float = Field(4.0, gt=0)
    static_power_w: float = Field(1.0, ge=0)
    energy_per_gflop_j: float = Field(0.1, ge=0)


class PeersConfig(Section):
    """Device peer graph of decentralized learning (see fedge.system.PeerGraph)."""

    graph: Literal["knn", "radius", "complete", "edge", "configured"] = "knn"
    k: int = Field(4, ge=1, description="knn: nearest devices each device links to")
    radius_m: float = Field(200.0, gt=0, description="radius: longest peer link in metres")
    links: list[tuple[str, str]] = Field(
        default_factory=list, description="configured: device-id pairs, e.g. [['dev0', 'dev1']]"
    )


class D2DConfig(Section):
    """Device <-> device traffic: relayed through the edges, or a direct radio link."""

    mode: Literal["relay", "direct"] = "relay"
    bandwidth_mhz: float = Field(1.0, gt=0)
    tx_power_w: float = Field(0.2, gt=0)
    latency_ms: float = Field(0.0, ge=0)


class LinksConfig(Section):
    """How transfers that overlap in time share a link (``fedge.system.sharing``)."""

    shared: bool = Field(
        True,
        description="overlapping transfers share a cell's band, the WAN and the backhaul; "
        "false: every transfer gets its link's full capacity",
    )
    policy: Literal["equal", "fixed"] = Field(
        "equal",
        description="equal: processor sharing (capacity / active transfers); fixed: capacity "
        "/ slots for every transfer",
    )
    slots: int = Field(1, ge=1, description="fixed: the channels a link is cut into")


class SumoConfig(Section):
    """``[system.sumo]``: vehicles simulated by SUMO when ``system.mobility = "sumo"``.

    The highway network is the highway topology's road (``system.edges`` segments of
    ``system.spacing_m``); the grid network spans the random-geometric topology's
    ``system.area_m`` square. Device ``dev<k>`` is the k-th vehicle to enter the network; the
    FCD file is cached in ``cache_dir`` under a hash of the scenario (``fedge.system.sumo``).
    """

    network: Literal["highway", "grid"] = Field(
        "highway", description="highway (topology highway) or grid (topology random_geometric)"
    )
    vehicles: int = Field(
        0, ge=0, description="trips to insert; 0: system.devices; at least system.devices"
    )
    insert_s: float = Field(60.0, gt=0, description="departures spread evenly over [0, insert_s)")
    seconds: float = Field(600.0, gt=0, description="simulated seconds (>= insert_s)")
    step_s: float = Field(1.0, gt=0, description="SUMO step length, also the FCD sampling step")
    lanes: int = Field(3, ge=1, description="highway: lanes per direction")
    speed_mps: float = Field(33.3, gt=0, description="highway: speed limit")
    grid_size: int = Field(5, ge=2, description="grid: junctions per side")
    seed_offset: int = Field(0, ge=0, description="SUMO's seed is derive_seed(seed, 'sumo', this)")
    cache_dir: str = Field("runs/sumo", description="where generated FCD files are kept")
    timeout_s: float = Field(300.0, gt=0, description="limit on each SUMO tool's run")


class SystemConfig(Section):
    topology: Literal["highway", "random_geometric", "file"] = "highway"
    topology_file: str | None = None
    edges: int = Field(4, ge=1)
    devices: int = Field(100, ge=1)
    spacing_m: float = Field(1000.0, gt=0)
    coverage_m: float = Field(600.0, gt=0)
    area_m: float = Field(2000.0, gt=0)
    mobility: Literal["static", "highway", "fcd", "sumo"] = "static"
    fcd_file: str | None = None
    sumo: SumoConfig = SumoConfig()
    speed_min_mps: float = Field(20.0, ge=0)
    speed_max_mps: float = Field(33.0, ge=0)
    dropout_prob: float = Field(0.0, ge=0, le=1)
    straggler_prob: float = Field(0.0, ge=0, le=1, description="per device and request")
    straggler_slowdown: float = Field(1.0, ge=1, description="a straggler's compute factor")
    out_of_coverage: Literal["error", "nearest"] = "error"
    wan: WanConfig = WanConfig()
    backhaul: BackhaulConfig = BackhaulConfig()
    wireless: WirelessConfig = WirelessConfig()
    device: DeviceComputeConfig = DeviceComputeConfig()
    peers: PeersConfig = PeersConfig()
    d2d: D2DConfig = D2DConfig()
    links: LinksConfig = LinksConfig()


class RayConfig(Section):
    """The Ray engine: where the cluster is and how many workers run device work."""

    address: str | None = Field(
        None, description="a Ray cluster address (e.g. ray://host:10001); local Ray when unset"
    )
    workers: int = Field(
        0, ge=0, description="worker actors that run device work; 0 uses one per CPU"
    )


class CompressionConfig(BaseModel):
    """One ``[[compression]]`` table: a compressor on a link; its other keys are the
    compressor's parameters (checked against it before any work)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    link: Literal["device-edge", "device-cloud", "edge-cloud", "edge-edge", "device-device"]
    method: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OutputConfig(Section):
    dir: str = "runs"
    store: str = "runs/fedge.sqlite"
    plots: bool = True
    progress: bool = True
    tensorboard: bool = Field(
        False,
        description="also write TensorBoard event files into <run dir>/tensorboard "
        "(extra 'tensorboard')",
    )
    mlflow_uri: str | None = Field(
        None,
        description="also log to MLflow at this tracking URI, e.g. 'mlruns' (a local folder, "
        "no server) or http://host:5000 (extra 'mlflow')",
    )
    mlflow_experiment: str | None = Field(
        None, description="the MLflow experiment name; None: the run's name"
    )


class ExperimentConfig(Section):
    name: str = "experiment"
    seed: int = Field(0, ge=0)
    rounds: int = Field(10, ge=1)
    algorithm: str = "fedavg"
    engine: str = Field("local", description="local | ray | grpc, or an import path")
    target_accuracy: float | None = Field(None, gt=0, le=1)
    stop_at_target: bool = Field(True, description="stop once target_accuracy is reached")
    threads: int = Field(0, ge=0, description="PyTorch CPU threads; 0 keeps PyTorch's default")
    study: str | None = Field(
        None,
        description="a study to run instead of training rounds (`fedge list studies`, or an "
        "import path); None: a training run",
    )
    study_params: dict[str, Any] = Field(
        default_factory=dict,
        description="the study's own settings, a free table here: checked against the "
        "study's settings model before any work (errors name study_params.<key>)",
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainConfig = TrainConfig()
    federation: FederationSettings = FederationSettings()
    decentralized: PeerSettings = PeerSettings()
    split: SplitSettings = SplitSettings()
    personalization: PersonalizationSettings = PersonalizationSettings()
    clustering: ClusterSettings = ClusterSettings()
    asynchronous: AsyncSettings = AsyncSettings()
    privacy: PrivacySettings = PrivacySettings()
    system: SystemConfig = SystemConfig()
    population: PopulationSettings = PopulationSettings()
    ray: RayConfig = RayConfig()
    grpc: GrpcSettings = GrpcSettings()
    secure_aggregation: SecureAggregationSettings = SecureAggregationSettings()
    output: OutputConfig = OutputConfig()
    compression: list[CompressionConfig] = Field(
        default_factory=list, description="compressors per link, applied in order"
    )
    caching: CachingSettings | None = Field(
        None, description="settings of study = 'caching' (edge caching with recommendation)"
    )

    @model_validator(mode="after")
    def _caching_needs_its_study(self) -> ExperimentConfig:
        if self.caching is not None and self.study != "caching":
            raise ConfigError("caching", "[caching]", "only with study = 'caching'")
        return self

    attack: list[AttackConfig] = Field(
        default_factory=list,
        description="attacks by kind on a share or a list of nodes (fedge list attacks)",
    )
    defence: DefenceSettings = DefenceSettings()


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a TOML file (or the JSON a run stores as config.json), apply ``key=value``
    overrides and validate."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        raw = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise FedgeError(f"config file {p} does not exist") from None
    except IsADirectoryError:
        raise FedgeError(f"config file {p} is a directory; allowed: a TOML file") from None
    except UnicodeDecodeError as exc:
        raise FedgeError(
            f"config file {p} is not UTF-8 text (byte {exc.start}); allowed: a UTF-8 TOML file"
        ) from None
    except OSError as exc:
        raise FedgeError(f"config file {p} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FedgeError(f"config file {p} is not valid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise FedgeError(f"config file {p} is not valid JSON: {exc}") from None
    return parse_config(apply_overrides(raw, overrides))


def parse_config(raw: Mapping[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc) from None


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``a.b=value`` sets raw[a][b]; the value is read as TOML (numbers, booleans,
    strings, arrays), and as a plain string when it is not valid TOML. A number indexes an
    array of tables: ``attack.0.share=0.2`` sets the first ``[[attack]]`` table's share."""
    out: dict[str, Any] = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", item, "dotted.key=value, e.g. rounds=2")
        parts = key.strip().split(".")
        node: Any = out
        for part in parts[:-1]:
            node = _child(node, part, item)
        if isinstance(node, list):
            raise ConfigError("--set", item, "a key of the indexed table, e.g. attack.0.share")
        node[parts[-1]] = _parse_value(text.strip())
    return out


def _child(node: Any, part: str, item: str) -> Any:
    """The section (or array of tables) ``part`` inside ``node``, copied before it changes."""
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node) or not isinstance(node[int(part)], dict):
            allowed = f"an index of an existing table (0..{len(node) - 1})"
            raise ConfigError("--set", item, allowed)
        node[int(part)] = _deep_copy(node[int(part)])
        return node[int(part)]
    child = node.setdefault(part, {})
    if isinstance(child, list):
        node[part] = child = list(child)
    elif not isinstance(child, dict):
        raise ConfigError("--set", item, f"{part} is a value, not a section")
    return child


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def _first_error(exc: ValidationError) -> ConfigError:
    return config_error(exc, ExperimentConfig)

"""Experiment configuration: TOML -> frozen, validated config, with ``--set`` overrides.

Every section forbids unknown keys; every error names the dotted field, the bad value
and what is allowed, and is raised before any work starts.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedge.core.errors import ConfigError, FedgeError

Positive = Field(gt=0)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class ModelConfig(Section):
    name: str = "fedavg_cnn"


class TrainingConfig(Section):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(1, ge=1)
    steps: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    proximal_mu: float = Field(0.0, ge=0)


class FederationConfig(Section):
    clients_per_round: int = Field(10, ge=1)
    clients_per_edge: int = Field(0, ge=0, description="devices an edge samples; 0: all")
    kappa1: int = Field(1, ge=1, description="local rounds between edge aggregations")
    kappa2: int = Field(1, ge=1, description="edge rounds between cloud aggregations")
    aggregator: str = "mean"
    aggregator_params: dict[str, float | int | str] = Field(default_factory=dict)
    server_optimizer: str | None = None
    server_params: dict[str, float] = Field(default_factory=dict)
    deadline_s: float | None = Field(None, gt=0)
    evaluate_every: int = Field(1, ge=1)
    interserver: str = "spaa"
    handover: bool = Field(True, description="edges keep updates of vehicles that moved in")
    malicious_edges: list[str] = Field(default_factory=list)
    malicious_mode: Literal["random", "scaled"] = "random"
    malicious_scale: float = 10.0
    interserver_params: dict[str, float | int | str] = Field(default_factory=dict)


class DecentralizedConfig(Section):
    """Settings of the decentralized algorithms (dfl, dpmn, dpmp, dpcg, dpmn_r)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    sparsity: float = Field(0.5, ge=0, lt=1, description="target pruned share per tensor")
    prune_warmup: int = Field(0, ge=0, description="dense rounds before pruning starts")
    lam: float = Field(1.0, ge=0, alias="lambda", description="weight of the regulariser")
    delta: float = Field(0.2, ge=-1, le=1, description="DPMN cosine-similarity threshold")
    neighbours: int = Field(3, ge=0, description="neighbours kept by dpcg and dpmn_r")
    max_neighbours: int = Field(0, ge=0, description="cap on DPMN neighbours; 0: none")
    reselect_every: int = Field(5, ge=1, description="rounds between neighbour selections")
    mixing: Literal["equal", "metropolis"] = "equal"


class SplitConfig(Section):
    """Split / collaborative training (split, splitfed, ushaped); see fedge.algorithms.split."""

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


class SystemConfig(Section):
    topology: Literal["highway", "random_geometric", "file"] = "highway"
    topology_file: str | None = None
    edges: int = Field(4, ge=1)
    devices: int = Field(100, ge=1)
    spacing_m: float = Field(1000.0, gt=0)
    coverage_m: float = Field(600.0, gt=0)
    area_m: float = Field(2000.0, gt=0)
    mobility: Literal["static", "highway", "fcd"] = "static"
    fcd_file: str | None = None
    speed_min_mps: float = Field(20.0, ge=0)
    speed_max_mps: float = Field(33.0, ge=0)
    dropout_prob: float = Field(0.0, ge=0, le=1)
    out_of_coverage: Literal["error", "nearest"] = "error"
    wan: WanConfig = WanConfig()
    backhaul: BackhaulConfig = BackhaulConfig()
    wireless: WirelessConfig = WirelessConfig()
    device: DeviceComputeConfig = DeviceComputeConfig()
    peers: PeersConfig = PeersConfig()
    d2d: D2DConfig = D2DConfig()


class RayConfig(Section):
    """The Ray engine: where the cluster is and how many workers run device work."""

    address: str | None = Field(
        None, description="a Ray cluster address (e.g. ray://host:10001); local Ray when unset"
    )
    workers: int = Field(
        0, ge=0, description="worker actors that run device work; 0 uses one per CPU"
    )


class GrpcConfig(Section):
    """The gRPC deployment: addresses, TLS, message limits, deadlines and retries."""

    host: str = "127.0.0.1"
    base_port: int = Field(
        0, ge=0, le=65535, description="first port for deploy-local; 0 picks free ports"
    )
    certs: str | None = Field(None, description="directory written by `fedge certs` (TLS)")
    chunk_bytes: int = Field(1 << 20, ge=1024, description="largest chunk of a model on the wire")
    max_message_bytes: int = Field(256 << 20, ge=1024, description="largest message accepted")
    call_timeout_s: float = Field(600.0, gt=0, description="longest wait for any reply")
    connect_timeout_s: float = Field(60.0, gt=0, description="wait for nodes to attach")
    retry_initial_s: float = Field(0.2, gt=0, description="first reconnection backoff")
    retry_max_s: float = Field(5.0, gt=0, description="longest reconnection backoff")
    heartbeat_s: float = Field(2.0, gt=0, description="keepalive ping interval")
    failover_s: float = Field(
        5.0, gt=0, description="a device cut off from its edge this long moves to a neighbour"
    )
    reattach_s: float = Field(
        20.0, ge=0, description="how long a call waits for its node to come back"
    )
    dormant_after_s: float = Field(
        10.0, ge=0, description="an edge cut off from the cloud this long trains alone (0: never)"
    )
    checkpoint_dir: str | None = Field(None, description="where nodes write their checkpoints")


class OutputConfig(Section):
    dir: str = "runs"
    store: str = "runs/fedge.sqlite"
    plots: bool = True
    progress: bool = True


class ExperimentConfig(Section):
    name: str = "experiment"
    seed: int = Field(0, ge=0)
    rounds: int = Field(10, ge=1)
    algorithm: str = "fedavg"
    engine: Literal["local", "ray", "grpc"] = "local"
    target_accuracy: float | None = Field(None, gt=0, le=1)
    stop_at_target: bool = Field(True, description="stop once target_accuracy is reached")
    threads: int = Field(0, ge=0, description="PyTorch CPU threads; 0 keeps PyTorch's default")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    federation: FederationConfig = FederationConfig()
    decentralized: DecentralizedConfig = DecentralizedConfig()
    split: SplitConfig = SplitConfig()
    system: SystemConfig = SystemConfig()
    ray: RayConfig = RayConfig()
    grpc: GrpcConfig = GrpcConfig()
    output: OutputConfig = OutputConfig()


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a TOML file (or the JSON a run stores as config.json), apply ``key=value``
    overrides and validate."""
    p = Path(path)
    try:
        text = p.read_text()
        raw = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise FedgeError(f"config file {p} does not exist") from None
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
    strings, arrays), and as a plain string when it is not valid TOML."""
    out: dict[str, Any] = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", item, "dotted.key=value, e.g. rounds=2")
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError("--set", item, f"{part} is a value, not a section")
            node = child
        node[parts[-1]] = _parse_value(text.strip())
    return out


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def _allowed_keys(loc: Sequence[str | int]) -> list[str]:
    model: type[BaseModel] = ExperimentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _first_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = [p for p in err["loc"]]
    field = ".".join(str(p) for p in loc) or "config"
    if err["type"] == "extra_forbidden":
        return ConfigError(
            field, err["input"], "unknown key; known keys here: " + ", ".join(_allowed_keys(loc))
        )
    if err["type"] == "missing":
        return ConfigError(field, None, "a value: this key is required")
    allowed = err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
    return ConfigError(field, err.get("input"), allowed)

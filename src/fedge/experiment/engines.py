"""Engines: where the node apps of a run execute, by name (``engine = "..."``).

An engine gives the node set a run's transport delivers through (the apps in this process,
or their portable work on a Ray actor pool) and, when the run is a set of processes rather
than one, the function that launches it (the gRPC deployment on loopback). Engines come
from this registry like algorithms, and a user's own engine by import path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedge.core.node import NodeApp
from fedge.core.registry import Registry, resolve_import_path
from fedge.runtime import NodeSet

if TYPE_CHECKING:
    from fedge.experiment.config import ExperimentConfig

AppsFactory = Callable[[], Mapping[str, NodeApp]]
"""Builds the node apps of the run again, exactly as this process did (for remote workers)."""
NodeSetFactory = Callable[["ExperimentConfig", Mapping[str, NodeApp], int, AppsFactory], NodeSet]


@dataclass(frozen=True)
class Engine:
    """An engine: its node set, and how a run of it is launched when it is not in-process."""

    name: str
    description: str
    node_set: NodeSetFactory
    launch: str | None = None
    """Import path of ``(config, out_dir, echo) -> RunResult`` for engines whose run is a
    set of processes; None: the run executes in this process."""
    resumable: bool = True
    """Whether ``fedge run --resume`` can go on with an interrupted run of this engine."""

    def launcher(self) -> Callable[..., Any] | None:
        return None if self.launch is None else resolve_import_path(self.launch, "engine")


ENGINES: Registry[Engine] = Registry("engine", lambda obj: isinstance(obj, Engine), "an Engine")


def set_threads(cfg: ExperimentConfig) -> None:
    """PyTorch's CPU threads as configured (0 keeps its default): float sums depend on it,
    so every process of a run sets the same."""
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)


def node_set(
    cfg: ExperimentConfig, apps: Mapping[str, NodeApp], seed: int, rebuild: AppsFactory
) -> NodeSet:
    """The node set of the configured engine."""
    return ENGINES.get(cfg.engine, "engine").node_set(cfg, apps, seed, rebuild)


def in_process(
    cfg: ExperimentConfig, apps: Mapping[str, NodeApp], seed: int, rebuild: AppsFactory
) -> NodeSet:
    """Every app in this process (a gRPC process keeps the apps of its own nodes)."""
    return NodeSet(apps, seed)


def ray_pool(
    cfg: ExperimentConfig, apps: Mapping[str, NodeApp], seed: int, rebuild: AppsFactory
) -> NodeSet:
    """Portable work (device training) on a bounded pool of Ray actors, each of which
    builds the apps once with ``rebuild``."""
    from fedge.runtime.ray import RayNodeSet  # only with the ray extra

    return RayNodeSet(
        apps,
        seed,
        rebuild,
        workers=cfg.ray.workers,
        address=cfg.ray.address,
        threads=cfg.threads or 1,
    )


def portable_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with ``data.root`` absolute: workers may not start in this directory."""
    if cfg.data.root is None:
        return cfg
    data = cfg.data.model_copy(update={"root": str(Path(cfg.data.root).resolve())})
    return cfg.model_copy(update={"data": data})


for _engine in (
    Engine("local", "in-process on the simulated clock (the default)", in_process),
    Engine("ray", "device training and edge rounds on a bounded Ray actor pool", ray_pool),
    Engine(
        "grpc",
        "a real deployment: cloud, edge and device processes over gRPC + TLS on loopback",
        in_process,
        launch="fedge.deploy.local:run_deployment",
    ),
):
    ENGINES.add(_engine.name, _engine, _engine.description)

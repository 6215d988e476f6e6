"""``engine``: where the node apps of a run execute (this process, or a Ray actor pool)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from fedge.core.node import NodeApp
from fedge.experiment.config import ExperimentConfig
from fedge.runtime import NodeSet


def set_threads(cfg: ExperimentConfig) -> None:
    """PyTorch's CPU threads as configured (0 keeps its default): float sums depend on it,
    so every process of a run sets the same."""
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)


def node_apps(cfg: ExperimentConfig) -> dict[str, NodeApp]:
    """The node apps exactly as the local engine builds them (what a Ray worker runs)."""
    from fedge.experiment.build import build  # build imports this module

    return build(cfg.model_copy(update={"engine": "local"})).nodes.apps


def node_set(cfg: ExperimentConfig, apps: dict[str, NodeApp], seed: int) -> NodeSet:
    """The apps in this process (``local``), or with their portable work on Ray (``ray``)."""
    if cfg.engine in ("local", "grpc"):  # a gRPC process keeps the apps of its own nodes
        return NodeSet(apps, seed)
    from fedge.runtime.ray import RayNodeSet  # only with the ray extra

    return RayNodeSet(
        apps,
        seed,
        partial(node_apps, _portable_paths(cfg)),
        workers=cfg.ray.workers,
        address=cfg.ray.address,
        threads=cfg.threads or 1,
    )


def _portable_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with ``data.root`` absolute: workers may not start in this directory."""
    if cfg.data.root is None:
        return cfg
    data = cfg.data.model_copy(update={"root": str(Path(cfg.data.root).resolve())})
    return cfg.model_copy(update={"data": data})

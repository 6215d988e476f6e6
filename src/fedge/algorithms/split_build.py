"""Assembly of the split algorithms (split, splitfed, ushaped): edge apps, the cloud app
and the coordinator, registered here.

Edges train on the samples of the devices attached to them at t = 0 (uploaded beforehand,
not charged); devices run no app of their own in these algorithms. At the end of a run the
coordinator writes ``early_exit.json`` (``early_exit_report``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fedge.algorithms.base import (
    EVAL_BATCH,
    AlgorithmSpec,
    Assembly,
    BuildContext,
    register_algorithm,
)
from fedge.algorithms.split import CloudTail, EdgeFlops, SplitEdge, SplitSettings
from fedge.algorithms.split_learning import SplitLearning
from fedge.core.errors import ConfigError
from fedge.core.files import atomic_write_bytes
from fedge.core.node import NodeApp, derive_seed
from fedge.learning import ArrayDataset, evaluate, profile, profile_blocks
from fedge.learning.early_exit import default_thresholds, early_exit, exit_costs
from fedge.learning.split import SplitModel, exit_head, feature_shape
from fedge.orchestration.split_point import EdgePool, Layer, Workload, choose_cut
from fedge.system.model import SystemModel


def tmoa_cut(
    cfg: Any,
    system: SystemModel,
    model: nn.Module,
    input_shape: tuple[int, ...],
    ushaped: bool,
) -> int:
    """TMOA's cut (objective ``latest``, TMOA's default workload) for this run's edges: the
    slowest edge's FLOP/s, the smallest edge memory (P0), their static power and energy per
    FLOP, the cloud's FLOP/s, the WAN, the edge count. Clamped so that at least one block
    (two when U-shaped) stays on the cloud."""
    prof = profile_blocks(model, input_shape)
    layers = [
        Layer(ly.name, ly.flops_forward, float(ly.param_bytes), float(ly.output_bytes))
        for ly in prof.layers
    ]
    edges = [e.compute for e in system.topology.edges]
    wan = cfg.system.wan
    pool = EdgePool(
        nodes=len(edges),
        flops=min(e.flops_per_s for e in edges),
        memory_bytes=min(e.memory_bytes for e in edges),
        static_power_w=max(e.static_power_w for e in edges),
        energy_per_flop_j=max(e.energy_per_flop_j for e in edges),
        cloud_flops=system.topology.cloud.compute.flops_per_s,
        wan_bps=wan.bandwidth_mbps * 1e6,
        wan_latency_s=wan.latency_ms / 1e3,
    )
    work = Workload(input_bytes=float(4 * np.prod(input_shape)))
    choice = choose_cut(layers, pool, work)
    if choice.cut is None:
        failing = ", ".join(choice.failing)
        raise ConfigError(
            "split.cut", "tmoa", f"an integer: TMOA finds no feasible cut ({failing})"
        )
    return min(choice.cut, len(layers) - (2 if ushaped else 1))


def _edge_data(
    system: SystemModel, train: ArrayDataset, parts: Sequence[np.ndarray]
) -> dict[str, ArrayDataset]:
    index = system.topology.device_index  # parsed from the id, not a search of every id
    out: dict[str, ArrayDataset] = {}
    for edge in system.ids("edge"):
        idx = [parts[index(d)] for d in system.attached_devices(edge, 0.0)]
        if idx:
            out[edge] = train.view(np.sort(np.concatenate(idx)))
    return out


def _flops(module: nn.Module, shape: tuple[int, ...]) -> float:
    if not list(module.children()):
        return 0.0
    return float(profile(module, shape).flops_train)


def split_variant(parallel: bool, ushaped: bool) -> Callable[[BuildContext], Assembly]:
    """The hook of one split variant: edge apps, the cloud app and the coordinator."""

    def assemble(ctx: BuildContext) -> Assembly:
        sc: SplitSettings = ctx.settings
        system, train, shape = ctx.system, ctx.train, ctx.train.input_shape
        model = ctx.model
        cut = tmoa_cut(ctx.config, system, model, shape, ushaped) if sc.cut == "tmoa" else sc.cut
        split = SplitModel.build(model, int(cut), shape, train.n_classes, ushaped=ushaped)
        fshape = feature_shape(split.head, shape)
        split.exit = exit_head(
            fshape, train.n_classes, pool=sc.exit_pool, seed=derive_seed(ctx.seed, "exit")
        )
        if sc.master not in ("all", *system.ids("edge")):
            allowed = "'all' or one of " + ", ".join(system.ids("edge"))
            raise ConfigError("split.master", sc.master, allowed)
        settings = sc.model_copy(update={"cut": int(cut)})
        body_shape = feature_shape(split.tail, fshape) if ushaped else fshape
        flops = EdgeFlops(
            head=_flops(split.head, shape),
            exit=_flops(split.exit, fshape),
            last=_flops(split.last, body_shape) if split.last is not None else 0.0,
        )
        data = _edge_data(system, train, ctx.parts)
        edge = SplitEdge(split, data, ctx.training, settings, flops)
        apps = {e: edge.app(e) for e in system.ids("edge")}
        cloud = CloudTail(split, ctx.training, sc.b, _flops(split.tail, fshape))
        apps["cloud"] = cloud.register(NodeApp("cloud", "cloud"))
        fed = ctx.config.federation
        coordinator = SplitLearning(
            parts=split,
            evaluate=_evaluator(ctx.test, EVAL_BATCH),
            parallel=parallel,
            ushaped=ushaped,
            evaluate_every=fed.evaluate_every,
            deadline_s=fed.deadline_s,
            final=early_exit_report(sc.exit_threshold, system, split, ctx.test, EVAL_BATCH),
        )
        return Assembly(apps, coordinator)

    return assemble


EARLY_EXIT_FILE = "early_exit.json"


def early_exit_report(
    tau: float, system: SystemModel, split: SplitModel, test: ArrayDataset, batch: int
) -> Callable[[Path, float], Mapping[str, Any]]:
    """The hook that writes ``early_exit.json`` (threshold, exit_fraction, accuracy,
    latency_ms per entropy threshold) for the trained model on the test set, and returns
    the summary figures at ``split.exit_threshold`` and at both ends.

    Costs: this run's edge and cloud FLOP/s (the first edge's profile), WAN bandwidth, and the
    WAN latency in force at the end of the run (the trace's, when there is one).
    """
    topo = system.topology
    edge = topo.node(system.ids("edge")[0]).compute.flops_per_s
    cloud = topo.cloud.compute.flops_per_s

    def final(run_dir: Path, now_s: float) -> dict[str, Any]:
        costs = exit_costs(
            split,
            test.input_shape,
            test.n_classes,
            edge,
            cloud,
            topo.wan.bandwidth_bps,
            topo.wan.latency_at(now_s),
        )
        thresholds = sorted({*default_thresholds(test.n_classes), tau})
        points = early_exit(split, test, thresholds, costs, batch)
        text = json.dumps([asdict(p) for p in points], indent=2)
        atomic_write_bytes(run_dir / EARLY_EXIT_FILE, text.encode())
        at = next(p for p in points if p.threshold == tau)
        return {
            "exit_threshold": tau,
            "exit_fraction": at.exit_fraction,
            "exit_accuracy": at.accuracy,
            "exit_latency_ms": at.latency_ms,
            "cloud_only_latency_ms": points[0].latency_ms,
            "edge_only_latency_ms": points[-1].latency_ms,
        }

    return final


def _evaluator(test: ArrayDataset, batch: int) -> Callable[[nn.Module], dict[str, float]]:
    def run(module: nn.Module) -> dict[str, float]:
        return evaluate(module, test, batch_size=batch).as_dict()

    return run


_VARIANTS = {
    "split": ("Vanilla split learning: edges take turns, the cloud runs the tail", False, False),
    "splitfed": ("SplitFed: edges in parallel, edge parts averaged with U_i weights", True, False),
    "ushaped": ("U-shaped SplitFed: labels and the last block stay on the edge", True, True),
}
for _name, (_text, _parallel, _ushaped) in _VARIANTS.items():
    register_algorithm(
        AlgorithmSpec(
            _name,
            _text,
            split_variant(_parallel, _ushaped),
            SplitSettings,
            roles=("split",),
            links=("edge-cloud",),
            finetune="none",
        )
    )

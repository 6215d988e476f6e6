"""``fedge partition-model``: TMOA on a real model profile, per edge count and bandwidth.

The model is profiled block by block (``learning.profile_blocks``: a cut can fall between
top-level children); the cost model and the exact solver are ``orchestration.split_point``.
For every (edge count, WAN bandwidth) the result holds the chosen cut, its latency, energy
and memory, whether it is feasible, the brute-force cut over the same cost model, and the
gains against cloud-only and against the better (lower-latency) of edge-only and cloud-only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fedge.core.errors import ConfigError
from fedge.learning import build_model, profile_blocks
from fedge.orchestration.split_point import (
    Choice,
    EdgePool,
    Layer,
    Workload,
    brute_force_cut,
    choose_cut,
    cut_costs,
)
from fedge.results.plots import plot_lines

FLOAT_BYTES = 4


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``3x224x224`` -> (3, 224, 224)."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ConfigError("--input", text, "positive sizes joined by x, e.g. 3x224x224")
    return shape


def model_layers(name: str, input_shape: tuple[int, ...], n_classes: int = 10) -> list[Layer]:
    """Cut-able blocks of a registered model with their FLOPs and bytes per sample."""
    model = build_model(name, input_shape, n_classes, seed=0)
    prof = profile_blocks(model, input_shape)
    return [
        Layer(ly.name, ly.flops_forward, float(ly.param_bytes), float(ly.output_bytes))
        for ly in prof.layers
    ]


def _gain(chosen: float, baseline: float) -> float:
    return baseline / chosen if chosen > 0 and math.isfinite(baseline) else math.nan


def _result(
    layers: Sequence[Layer], pool: EdgePool, work: Workload, choice: Choice, objective: str
) -> dict[str, Any]:
    costs = choice.costs
    n = len(layers)
    out: dict[str, Any] = {
        "edges": pool.nodes,
        "bandwidth_mbps": pool.wan_bps / 1e6,
        "cut": choice.cut,
        "cut_after": "-"
        if choice.cut is None
        else layers[choice.cut - 1].name
        if choice.cut
        else "input",
        "feasible": choice.feasible,
        "failing": list(choice.failing),
        "brute_force_cut": brute_force_cut(layers, pool, work, objective),
        "objective": objective,
        "blocks": n,
    }
    j = choice.cut if choice.cut is not None else int(np.argmin(costs.latency_s))
    out.update(
        latency_s=float(costs.latency_s[j]),
        energy_j=float(costs.energy_j[j]),
        memory_bytes=float(costs.memory_bytes[j]),
    )
    cloud, edge = 0, n
    best = cloud if costs.latency_s[cloud] <= costs.latency_s[edge] else edge
    out["latency_gain_vs_cloud"] = _gain(out["latency_s"], float(costs.latency_s[cloud]))
    out["latency_gain_vs_best_end"] = _gain(out["latency_s"], float(costs.latency_s[best]))
    out["energy_saving_vs_cloud"] = 1 - out["energy_j"] / float(costs.energy_j[cloud])
    out["energy_saving_vs_best_end"] = 1 - out["energy_j"] / float(costs.energy_j[best])
    return out


def partition_model(
    layers: Sequence[Layer],
    pool: EdgePool,
    work: Workload,
    edges: Sequence[int],
    bandwidths_mbps: Sequence[float],
    objective: str = "latest",
) -> list[dict[str, Any]]:
    """One result per (edge count, bandwidth), in that order."""
    out = []
    for x in edges:
        for mbps in bandwidths_mbps:
            p = replace(pool, nodes=int(x), wan_bps=float(mbps) * 1e6)
            out.append(_result(layers, p, work, choose_cut(layers, p, work, objective), objective))
    return out


def curve_rows(
    layers: Sequence[Layer], pool: EdgePool, work: Workload, edges: Sequence[int]
) -> list[dict[str, Any]]:
    """Memory, latency and energy of every cut, one row per (edge count, cut)."""
    rows = []
    for x in edges:
        costs = cut_costs(layers, replace(pool, nodes=int(x)), work)
        ok = costs.all_feasible()
        for j in range(len(layers) + 1):
            rows.append(
                {
                    "edges": int(x),
                    "cut": j,
                    "after": layers[j - 1].name if j else "input",
                    "memory_mb": costs.memory_bytes[j] / 1e6,
                    "latency_ms": costs.latency_s[j] * 1e3,
                    "energy_j": float(costs.energy_j[j]),
                    "power_w": float(costs.power_w[j]),
                    "feasible": bool(ok[j]),
                }
            )
    return rows


def plot_curves(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """memory.png, latency.png, energy.png over the cut index, one line per edge count."""
    paths: list[Path] = []
    by_edges = sorted({r["edges"] for r in rows})
    for key, label, name in (
        ("memory_mb", "edge memory (MB)", "memory"),
        ("latency_ms", "latency per task (ms)", "latency"),
        ("power_w", "power per edge (W)", "energy"),
    ):
        curves = []
        for x in by_edges:
            mine = [r for r in rows if r["edges"] == x]
            xs = np.array([r["cut"] for r in mine], dtype=float)
            ys = np.array([min(r[key], 1e12) for r in mine], dtype=float)
            curves.append((f"{x} edges", xs, ys))
        paths += plot_lines(out_dir / f"{name}.png", curves, "cut after block j", label, name)
    return paths

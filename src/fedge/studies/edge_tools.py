"""Command-line glue of the edge-orchestration tools: ``fedge schedule``, ``fedge
partition-model``. Arguments are checked here (one ConfigError naming the option); the
work is done by ``fedge.orchestration``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from fedge.core.errors import ConfigError
from fedge.orchestration.scheduling import SCHEDULERS, ScheduleStudy
from fedge.results import format_table

ETC_KINDS = ("consistent", "inconsistent")
SCHEDULE_COLUMNS = (
    "etc",
    "nodes",
    "algorithm",
    "makespan",
    "total_time",
    "load_imbalance",
    "runtime_ms",
    "gap_%",
    "max_gap_%",
    "optimal",
)


def int_list(arg: str, text: str) -> list[int]:
    """``10,20,30`` -> [10, 20, 30]; every value an integer >= 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ConfigError(arg, text, "comma-separated integers >= 1, e.g. 10,20,30")
    return values


def float_list(arg: str, text: str) -> list[float]:
    """``1,10,100`` -> [1.0, 10.0, 100.0]; every value a number > 0."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not v > 0 for v in values):
        raise ConfigError(arg, text, "comma-separated numbers > 0, e.g. 1,10,100")
    return values


def positive(arg: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(arg, value, "a number > 0")


def schedule_study(args: argparse.Namespace) -> ScheduleStudy:
    """The study ``fedge schedule`` asked for, every option checked first."""
    algorithms = [a.strip() for a in args.algorithms.split(",")]
    for name in algorithms:
        SCHEDULERS.get(name, "--algorithms")
    etcs = [e.strip() for e in args.etc.split(",")]
    for etc in etcs:
        if etc not in ETC_KINDS:
            raise ConfigError("--etc", etc, "consistent, inconsistent or both comma-separated")
    for arg, value in (("--tasks", args.tasks), ("--seeds", args.seeds), ("--window", args.window)):
        if value is not None and value < 1:
            raise ConfigError(arg, value, "an integer >= 1")
    positive("--load", args.load)
    positive("--milp-time-limit", args.milp_time_limit)
    return ScheduleStudy(
        tasks=args.tasks,
        nodes=int_list("--nodes", args.nodes),
        algorithms=algorithms,
        seeds=args.seeds,
        etcs=etcs,
        window=args.window,
        load=args.load,
        params={"milp": {"time_limit_s": args.milp_time_limit}},
    )


def _mean(runs: Sequence[dict[str, Any]], key: str) -> float:
    return sum(float(r[key]) for r in runs) / len(runs)


def schedule_table(rows: Sequence[dict[str, Any]]) -> str:
    """Mean over seeds per (etc, nodes, algorithm); ``optimal`` counts MILP runs proven
    optimal."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["etc"], row["nodes"], row["algorithm"]), []).append(row)
    lines = []
    for (etc, nodes, algorithm), runs in groups.items():
        proven = [r["proven_optimal"] for r in runs if r["proven_optimal"] is not None]
        lines.append(
            {
                "etc": etc,
                "nodes": nodes,
                "algorithm": algorithm,
                "makespan": round(_mean(runs, "makespan"), 2),
                "total_time": round(_mean(runs, "total_time"), 1),
                "load_imbalance": round(_mean(runs, "load_imbalance"), 4),
                "runtime_ms": round(1000 * _mean(runs, "runtime_s"), 1),
                "gap_%": round(100 * _mean(runs, "gap"), 2),
                "max_gap_%": round(100 * max(r["gap"] for r in runs), 2),
                "optimal": f"{sum(proven)}/{len(proven)}" if proven else "-",
            }
        )
    seeds = max((len(g) for g in groups.values()), default=0)
    return f"mean over {seeds} seed(s)\n" + format_table(lines, SCHEDULE_COLUMNS)


PARTITION_COLUMNS = (
    "edges",
    "bandwidth_mbps",
    "cut",
    "cut_after",
    "feasible",
    "brute_force_cut",
    "latency_ms",
    "energy_j",
    "memory_mb",
    "latency_gain_vs_cloud",
    "latency_gain_vs_best_end",
    "energy_saving_vs_cloud",
)
CURVE_COLUMNS = ("edges", "cut", "after", "memory_mb", "latency_ms", "power_w", "feasible")


def partition_inputs(args: argparse.Namespace) -> tuple[Any, Any, list[int], list[float]]:
    """(EdgePool, Workload, edge counts, bandwidths) of ``fedge partition-model``."""
    from fedge.orchestration.split_point import EdgePool, Workload

    for arg in ("edge_gflops", "edge_memory_mib", "cloud_gflops", "uplink_mbps"):
        positive("--" + arg.replace("_", "-"), getattr(args, arg))
    for arg in ("arrival_rate", "max_latency_ms", "max_power_w"):
        positive("--" + arg.replace("_", "-"), getattr(args, arg))
    pool = EdgePool(
        flops=args.edge_gflops * 1e9,
        memory_bytes=args.edge_memory_mib * 2**20,
        cloud_flops=args.cloud_gflops * 1e9,
        uplink_bps=args.uplink_mbps * 1e6,
        static_power_w=args.static_power_w,
    )
    work = Workload(
        arrival_rate=args.arrival_rate,
        max_latency_s=args.max_latency_ms / 1e3,
        max_power_w=args.max_power_w,
        queue=args.queue,
    )
    edges = int_list("--edges", args.edges)
    return pool, work, edges, float_list("--bandwidth-mbps", args.bandwidth_mbps)


def partition_table(results: Sequence[dict[str, Any]]) -> str:
    """The chosen cut per (edges, bandwidth), and whether brute force agrees."""
    rows = [
        {
            **r,
            "latency_ms": round(1e3 * r["latency_s"], 2),
            "memory_mb": round(r["memory_bytes"] / 1e6, 2),
            "energy_j": round(r["energy_j"], 4),
            "feasible": "yes" if r["feasible"] else "no: " + ", ".join(r["failing"]),
        }
        for r in results
    ]
    agree = all(r["cut"] == r["brute_force_cut"] for r in results)
    blocks = results[0]["blocks"] if results else 0
    head = (
        f"TMOA, objective {results[0]['objective'] if results else '-'}: exact, every cut "
        f"0..{blocks} enumerated; brute force over the same cost model "
        f"{'agrees' if agree else 'DISAGREES'}"
    )
    return head + "\n" + format_table(rows, PARTITION_COLUMNS)


def curve_table(rows: Sequence[dict[str, Any]]) -> str:
    """Memory, latency and power per edge over every cut."""
    shown = [
        {**r, **{k: round(r[k], 3) for k in ("memory_mb", "latency_ms", "power_w")}} for r in rows
    ]
    return format_table(shown, CURVE_COLUMNS)

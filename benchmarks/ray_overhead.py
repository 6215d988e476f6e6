"""Per-round wall time of the Ray engine against the local engine, measured in one run.

Both engines run the quickstart's FedAvg (examples/quickstart.toml, Fashion-MNIST, the
FedAvg CNN) with every device training every round (``clients_per_round = devices``) for
each ``--devices`` count, ``--steps`` local SGD steps of batch 32, ``--rounds`` rounds, torch
on one thread in the driver and in every actor. The Ray side runs on ``--workers`` actors
(default: the machine's CPUs), once per ``--wires`` form of the messages (``encoded``:
``Message.encode`` bytes; ``pickle``: Python objects pickled by Ray). Ray's own start and the
pool's start (each actor builds the apps once, loading the data) are timed apart; the rounds
are timed by the coordinator's observer, without evaluation. Round 1 includes each process's
one-off first-optimizer import (torch._dynamo, ~2 s), so the ratio ray/local is reported for
the later rounds (the steady state: median and fastest) and for all rounds. With
``--repeats`` each side runs that many times in alternating order and the medians are
reported (a shared machine is noisy: the pool needs every core). The final weights of
every side and repeat must be identical to the local engine's.

With ``--algorithm hierarchical`` (or ``msfl``, ``single_server``) the same workload runs
as hierarchical FL over ``--edges`` edge servers: each edge's round (its devices' training
and its aggregation) runs on the pool, in parallel across edges, and the table also counts
the edge rounds that ran there (``edges on pool``); the weights must still be those of
the local engine.

Run from the repo root (about 3 minutes a repeat on a 2-core machine)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_overhead.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_overhead.py --repeats 3 --rounds 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_overhead.py --devices 10 --json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_overhead.py --algorithm hierarchical \
        --edges 2 --devices 8 --workers 2 --wires encoded
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import time
from functools import partial
from typing import Any

import ray
import torch

from fedge.experiment.build import build, node_apps
from fedge.experiment.config import ExperimentConfig, load_config
from fedge.runtime import NodeSet, SimulatedTransport
from fedge.runtime.ray import WIRES, RayNodeSet, Wire

CONFIG = "examples/quickstart.toml"
HIERARCHIES = ("fedavg", "hierarchical", "msfl", "single_server")


def config(devices: int, args: argparse.Namespace) -> ExperimentConfig:
    sets = [f"rounds={args.rounds}", f"system.devices={devices}", "threads=1"]
    sets += [f"federation.clients_per_round={devices}", f"training.steps={args.steps}"]
    if args.algorithm != "fedavg":  # every device of an edge trains in each edge round
        sets += [f"algorithm={args.algorithm!r}", f"system.edges={args.edges}"]
    return load_config(CONFIG, [*sets, *args.set])


def run_side(cfg: ExperimentConfig, wire: Wire | None, workers: int) -> dict[str, Any]:
    """One engine's rounds: the local node set (``wire`` None) or a Ray pool."""
    exp = build(cfg)
    nodes: NodeSet = exp.nodes
    pool_s = 0.0
    if wire is not None:
        factory = partial(node_apps, cfg)
        nodes = RayNodeSet(nodes.apps, nodes.seed, factory, workers=workers, wire=wire)
        start = time.perf_counter()
        nodes.start()
        pool_s = time.perf_counter() - start
    transport = SimulatedTransport(nodes, exp.system)
    marks = [time.perf_counter()]

    def observer(record: Any) -> bool:
        marks.append(time.perf_counter())
        return False

    try:
        history = exp.coordinator.run(transport, exp.initial_state, exp.rng, cfg.rounds, observer)
    finally:
        nodes.close()
    round_s = [b - a for a, b in itertools.pairwise(marks)]
    subtrees = getattr(nodes, "remote_subtrees", 0)  # edge rounds taken from the pool
    return {"pool_start_s": pool_s, "round_s": round_s, "state": history.final_state,
            "subtrees": subtrees}  # fmt: skip


def identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def summarise(devices: int, wire: Wire | None, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats of one side."""
    return {
        "devices": devices,
        "side": "local" if wire is None else f"ray/{wire}",
        "pool_start_s": statistics.median(r["pool_start_s"] for r in runs),
        "round1_s": statistics.median(r["round_s"][0] for r in runs),
        "later_round_s": statistics.median(
            statistics.mean(r["round_s"][1:] or r["round_s"]) for r in runs
        ),
        "later_round_min_s": min(min(r["round_s"][1:] or r["round_s"]) for r in runs),
        "all_rounds_s": statistics.median(sum(r["round_s"]) for r in runs),
        "walls": [r["round_s"] for r in runs],
        "subtrees": statistics.median(r["subtrees"] for r in runs),
    }


def measure(devices: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every side ``--repeats`` times, in alternating order (to cancel machine noise)."""
    cfg = config(devices, args)
    sides: list[Wire | None] = [None, *args.wires]
    runs: dict[Wire | None, list[dict[str, Any]]] = {side: [] for side in sides}
    for i in range(args.repeats):
        for side in sides if i % 2 == 0 else sides[::-1]:
            runs[side].append(run_side(cfg, side, args.workers))
    reference = runs[None][0]["state"]
    rows = [summarise(devices, side, rs) for side, rs in runs.items()]
    for row, rs in zip(rows, runs.values(), strict=True):
        row["ratio_later"] = row["later_round_s"] / rows[0]["later_round_s"]
        row["ratio_later_min"] = row["later_round_min_s"] / rows[0]["later_round_min_s"]
        row["ratio_all"] = row["all_rounds_s"] / rows[0]["all_rounds_s"]
        row["identical"] = all(identical(r["state"], reference) for r in rs)
    return rows


def print_table(rows: list[dict[str, Any]], setup: dict[str, Any]) -> None:
    print("  ".join(f"{k}={v}" for k, v in setup.items()))
    heads = ["devices", "side", "pool start s", "round 1 s", "later round s", "later min s"]
    heads += ["ray/local later", "ray/local min", "ray/local all", "same weights"]
    heads += ["edges on pool"]
    print("".join(f"{h:>16}" for h in heads))
    for r in rows:
        cells = [r["devices"], r["side"], f"{r['pool_start_s']:.2f}", f"{r['round1_s']:.2f}"]
        cells += [f"{r['later_round_s']:.2f}", f"{r['later_round_min_s']:.2f}"]
        cells += [f"{r[k]:.3f}" for k in ("ratio_later", "ratio_later_min", "ratio_all")]
        print("".join(f"{c!s:>16}" for c in (*cells, r["identical"], r["subtrees"])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[10, 100])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="runs of each side (median)")
    p.add_argument("--steps", type=int, default=5, help="local SGD steps per device and round")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Ray actors")
    p.add_argument("--wires", nargs="+", default=list(WIRES), choices=WIRES)
    p.add_argument("--algorithm", default="fedavg", choices=HIERARCHIES, help="edges on Ray")
    p.add_argument("--edges", type=int, default=2, help="edge servers (not for fedavg)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # the driver's one-off import
    start = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level=logging.WARNING)
    setup = {"config": CONFIG, "rounds": args.rounds, "steps": args.steps, "repeats": args.repeats}
    setup.update(algorithm=args.algorithm, edges=args.edges if args.algorithm != "fedavg" else 0)
    setup.update(workers=args.workers, ray_init_s=round(time.perf_counter() - start, 2))
    try:
        rows = [row for n in args.devices for row in measure(n, args)]
    finally:
        ray.shutdown()
    if args.json:
        print(json.dumps({"setup": setup, "rows": rows}))
    else:
        print_table(rows, setup)


if __name__ == "__main__":
    main()

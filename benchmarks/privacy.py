"""The cost of differential privacy relative to plain FedAvg, in one run.

Three sides run the quickstart's FedAvg (examples/quickstart.toml) for ``--rounds`` rounds
on the simulated transport with no observer (no evaluation): ``plain``, ``central``
(DP-FedAvg: clipping, Gaussian noise at the cloud, RDP accounting every round) and
``local`` (each device clips and noises its own update; per-device accounting). Sides are
interleaved (plain, central, local, plain, ...) over ``--repeats`` to cancel machine noise;
the script prints the median wall time of the rounds, the bytes sent up and down and the
simulated time of each side, and their ratios to plain FedAvg.

What to expect: DP adds no bytes (noise does not change an update's size; an update that
travels dense stays dense) and no simulated time (the cost model charges the same
messages and FLOPs: clipping and noise are not modelled as device compute); the wall-time
overhead is the clipping and noise tensors and, for central DP, one accountant call per
round. Run from the repo root::

    .venv/bin/python benchmarks/privacy.py                      # 3 rounds x 3 repeats
    .venv/bin/python benchmarks/privacy.py --rounds 5 --repeats 5 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from fedge.experiment.build import build
from fedge.experiment.config import load_config

CONFIG = "examples/quickstart.toml"
SIDES: dict[str, list[str]] = {
    "plain": [],
    "central": ["privacy.mechanism='central'", "privacy.noise_multiplier=1.0", "privacy.clip=1.0"],
    "local": ["privacy.mechanism='local'", "privacy.noise_multiplier=1.0", "privacy.clip=1.0"],
}


def run_side(overrides: list[str], rounds: int) -> dict[str, float]:
    """Build the quickstart with ``overrides`` and time ``rounds`` rounds of its coordinator."""
    cfg = load_config(CONFIG, [f"rounds={rounds}", "output.progress=false", *overrides])
    exp = build(cfg)
    start = time.perf_counter()
    exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, rounds)
    wall_s = time.perf_counter() - start
    stats = exp.transport.stats()
    exp.nodes.close()
    return {
        "wall_s": wall_s,
        "bytes_up": float(stats["bytes_up"]),
        "bytes_down": float(stats["bytes_down"]),
        "sim_time_s": float(stats["sim_time_s"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    for _ in range(args.repeats):
        for side, overrides in SIDES.items():
            results[side].append(run_side(overrides, args.rounds))
    report: dict[str, Any] = {"rounds": args.rounds, "repeats": args.repeats}
    for side, runs in results.items():
        report[side] = {
            "wall_s_median": statistics.median(r["wall_s"] for r in runs),
            "bytes_up": runs[0]["bytes_up"],
            "bytes_down": runs[0]["bytes_down"],
            "sim_time_s": runs[0]["sim_time_s"],
        }
    plain = report["plain"]
    for side in ("central", "local"):
        report[side]["ratio"] = {k: report[side][k] / plain[k] for k in plain}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"quickstart FedAvg, {args.rounds} rounds, median of {args.repeats} (interleaved)")
    print(f"{'side':8} {'wall_s':>8} {'bytes_up':>12} {'bytes_down':>12} {'sim_time_s':>10}")
    for side in SIDES:
        r = report[side]
        print(
            f"{side:8} {r['wall_s_median']:8.2f} {r['bytes_up']:12.0f} "
            f"{r['bytes_down']:12.0f} {r['sim_time_s']:10.2f}"
        )
    for side in ("central", "local"):
        ratio = report[side]["ratio"]
        print(
            f"{side}/plain: wall {ratio['wall_s_median']:.3f}, bytes up {ratio['bytes_up']:.3f}, "
            f"bytes down {ratio['bytes_down']:.3f}, sim time {ratio['sim_time_s']:.3f}"
        )


if __name__ == "__main__":
    main()

"""Hostile input at volume against a running gRPC deployment (``fedge.deploy.fuzz``).

Runs a small hierarchical deployment on loopback (digits, 2 edges, 10 devices) with relays
in its cloud link and in one edge's device link, sends ``--messages`` bad messages of every
kind at the cloud and that edge while the run goes on, and prints per kind how many were
sent and refused and how, the refusals each node logged, their memory before and after,
and whether the final weights equal a run of the same seed on the local engine.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grpc_fuzz.py [--messages 1000] [--seed 0]
        [--rounds 4] [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fedge.deploy.fuzz import FuzzPlan, run_fuzzed
from fedge.deploy.local import LocalDeployment
from fedge.experiment.config import ExperimentConfig
from fedge.runs.run import run_experiment

CONFIG = {
    "name": "fuzzed",
    "seed": 3,
    "algorithm": "hierarchical",
    "threads": 1,
    "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5, "min_size": 5},
    "model": {"name": "mlp"},
    "training": {"lr": 0.1, "batch_size": 16, "epochs": 40},
    "system": {"edges": 2, "devices": 10, "spacing_m": 1000.0, "coverage_m": 600.0},
    "output": {"progress": False},
    "grpc": {
        "connect_timeout_s": 60.0,
        "call_timeout_s": 120.0,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.5,
        "reattach_s": 3.0,
        "dormant_after_s": 0.0,
        "max_message_bytes": 1 << 20,
    },
}


def fuzz_config(out: Path, rounds: int) -> ExperimentConfig:
    """The deployment the fuzzer attacks: small enough for CI, long enough to attack."""
    runs = out / "runs"
    data = {**CONFIG, "rounds": rounds}
    data["output"] = {**CONFIG["output"], "dir": str(runs), "store": str(runs / "f.sqlite")}  # type: ignore[dict-item]
    return ExperimentConfig.model_validate(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fedge-fuzz-"))
    cfg = fuzz_config(out, args.rounds)
    reference = run_experiment(cfg, out_dir=out / "reference")
    started = time.monotonic()
    run_dir, report = run_fuzzed(
        LocalDeployment(cfg, out / "deployment"), FuzzPlan.spread(args.messages, args.seed)
    )
    wall_s = time.monotonic() - started
    a = torch.load(run_dir / "model.pt", weights_only=True)
    b = torch.load(reference.run_dir / "model.pt", weights_only=True)
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if args.json:
        counts = {
            f"{t}/{k}": [c.sent, c.refused, dict(c.how)] for (t, k), c in report.counts.items()
        }
        figures = {"logged": report.logged, "rss_mib": report.rss_mib, "fuzz_s": report.wall_s,
                   "parts_s": report.parts_s, "run_s": wall_s, "same_weights": same}  # fmt: skip
        print(json.dumps({"counts": counts, **figures}))
        return
    print("\n".join(report.lines()))
    print(f"deployment wall time {wall_s:.1f} s; final weights equal the local run: {same}")


if __name__ == "__main__":
    main()

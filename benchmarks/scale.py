"""Scale: start-up, time per round (training vs everything else) and peak memory by population.

Each configuration runs in a fresh process (its peak RSS is its own). The process imports
fedge, builds the experiment (system, data, model, apps) and runs FedAvg rounds with a fixed
cohort on the local engine (simulated system costs charged, no evaluation). Reported:

* ``startup_s``: from the launch of the process to the start of the first round (Python's
  start, imports, data loading and ``fedge.experiment.build``); ``build_s``: the build alone;
* ``round_s``: the mean wall time of a round; ``train_s``: the part spent in local training
  (``fedge.learning.local_train``: minibatches, forward, backward, optimizer), timed by a
  wrapper around it; ``other_s = round_s - train_s``: everything the framework does besides
  (selection, messages, simulated links and clock, state copies, aggregation);
* ``overhead_per_client_ms = other_s / per_round``: the framework's cost per client and round;
  ``overhead_per_client_cpu_ms`` is the same in CPU time (``time.process_time``: this
  process's user and system time, page faults included), which other processes on a shared
  machine inflate much less than wall time;
* ``peak_rss_mib``: the peak resident memory of the process plus that of its largest child
  (the process tree; the local engine starts none).

Data: Fashion-MNIST (IID) up to its 60,000 training samples, above that Synthetic(1, 1)
(``leaf_synthetic``, made per client on demand; ``data.synthetic.max_samples = 100``).
Models: ``mlp`` (2 x 200), ``fedavg_cnn`` (Fashion-MNIST only) or ``logistic``. Every client
runs 5 local steps of 10 samples. Run from the repo root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py --json            # the full matrix
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py --population 1000000 --per-round 100 \
        --rounds 3 --model mlp --json                                         # one configuration
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

FASHION_SAMPLES = 60_000
POPULATIONS = (10_000, 100_000, 1_000_000)
COHORTS = (100, 1_000)
MODELS = ("mlp", "fedavg_cnn")


def dataset_for(population: int) -> str:
    """Fashion-MNIST while every device can hold a sample, else Synthetic(1, 1)."""
    return "fashion" if population <= FASHION_SAMPLES else "synthetic"


def config(
    dataset: str, population: int, per_round: int, model: str, rounds: int, steps: int = 5
) -> Any:
    """The experiment of one configuration (FedAvg, local engine, 10 RSUs on a highway)."""
    from fedge.experiment.config import ExperimentConfig

    fashion = dataset == "fashion"
    data: dict[str, Any] = (
        {"dataset": "fashion_mnist", "partition": "iid", "test_limit": 1000}
        if fashion
        else {"dataset": "leaf_synthetic", "synthetic": {"max_samples": 100}}
    )
    return ExperimentConfig.model_validate(
        {
            "name": f"scale-{dataset}-{population}-{per_round}-{model}",
            "rounds": rounds,
            "threads": 1,
            "data": data,
            "model": {"name": model},
            "training": {"lr": 0.05, "batch_size": 10, "steps": steps},
            "federation": {"clients_per_round": per_round},
            "system": {"edges": 10, "devices": population, "out_of_coverage": "nearest"},
        }
    )


def peak_rss_mib() -> float:
    """Peak RSS of this process plus its largest (waited-for) child, MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


class _TrainTimer:
    """Wraps a training function and adds up the wall time spent inside it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.total_s = 0.0
        self.cpu_s = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.total_s += time.perf_counter() - start
            self.cpu_s += time.process_time() - cpu


def measure(cfg: Any, rounds: int, launched: float | None = None) -> tuple[dict[str, Any], Any]:
    """Build ``cfg`` and run ``rounds`` rounds in this process; the figures and the experiment.

    ``launched`` is the wall-clock time (``time.time()``) the process was started at; the
    start-up then counts from it, else from this call.
    """
    from fedge.algorithms import apps
    from fedge.experiment.build import build
    from fedge.experiment.engines import set_threads

    timer = _TrainTimer(apps.local_train)
    apps.local_train = timer
    start = time.time() if launched is None else launched
    set_threads(cfg)
    t_build = time.perf_counter()
    exp = build(cfg)
    build_s = time.perf_counter() - t_build
    startup_s = time.time() - start
    marks = [(time.perf_counter(), 0.0)]
    cpu_marks = [(time.process_time(), 0.0)]

    def observe(_record: Any) -> bool:
        marks.append((time.perf_counter(), timer.total_s))
        cpu_marks.append((time.process_time(), timer.cpu_s))
        return False

    exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, rounds, observe)
    apps.local_train = timer.fn
    round_s = [b[0] - a[0] for a, b in itertools.pairwise(marks)]
    train_s = [b[1] - a[1] for a, b in itertools.pairwise(marks)]
    cpu_other = [(b[0] - a[0]) - (b[1] - a[1]) for a, b in itertools.pairwise(cpu_marks)]
    cohort = cfg.federation.clients_per_round
    mean_round, mean_train = sum(round_s) / len(round_s), sum(train_s) / len(train_s)
    row = {
        "population": cfg.system.devices,
        "per_round": cohort,
        "model": cfg.model.name,
        "dataset": cfg.data.dataset,
        "rounds": len(round_s),
        "startup_s": round(startup_s, 2),
        "build_s": round(build_s, 2),
        "round_s": round(mean_round, 3),
        "train_s": round(mean_train, 3),
        "other_s": round(mean_round - mean_train, 3),
        "overhead_per_client_ms": round((mean_round - mean_train) / cohort * 1e3, 3),
        "overhead_per_client_cpu_ms": round(sum(cpu_other) / len(cpu_other) / cohort * 1e3, 3),
        "round_s_each": [round(s, 3) for s in round_s],
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "apps_made": exp.nodes.apps.made,
        "sim_time_s": round(exp.transport.stats()["sim_time_s"], 2),
    }
    return row, exp


def fresh_process(script: str, args: list[str]) -> dict[str, Any]:
    """Run ``script --one ...`` in a new Python process; its last stdout line as JSON."""
    cmd = [sys.executable, script, *args, "--launched", repr(time.time())]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"{' '.join(args)}: exit {done.returncode}: {tail[0]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _matrix(rounds: int) -> list[tuple[int, int, str]]:
    out = []
    for population in POPULATIONS:
        for per_round in COHORTS:
            for model in MODELS:
                if model == "fedavg_cnn" and dataset_for(population) != "fashion":
                    continue
                out.append((population, per_round, model))
    return out


def _print_table(rows: list[dict[str, Any]]) -> None:
    keys = [
        "population",
        "per_round",
        "model",
        "startup_s",
        "round_s",
        "train_s",
        "overhead_per_client_ms",
        "overhead_per_client_cpu_ms",
        "peak_rss_mib",
    ]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--population", type=int, help="one configuration: devices")
    parser.add_argument("--per-round", type=int, default=100, help="clients per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", choices=("mlp", "fedavg_cnn", "logistic"), default="mlp")
    parser.add_argument("--dataset", choices=("fashion", "synthetic"), help="default: by size")
    parser.add_argument("--json", action="store_true", help="one JSON object per configuration")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        dataset = args.dataset or dataset_for(args.population)
        cfg = config(dataset, args.population, args.per_round, args.model, args.rounds)
        row, _ = measure(cfg, args.rounds, args.launched)
        print(json.dumps(row))
        return
    runs = (
        [(args.population, args.per_round, args.model)] if args.population else _matrix(args.rounds)
    )
    rows = []
    for population, per_round, model in runs:
        one = ["--one", "--population", str(population), "--per-round", str(per_round)]
        one += ["--rounds", str(args.rounds), "--model", model]
        if args.dataset:
            one += ["--dataset", args.dataset]
        rows.append(fresh_process(__file__, one))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        _print_table(rows)


if __name__ == "__main__":
    main()

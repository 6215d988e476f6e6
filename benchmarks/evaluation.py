"""Evaluation against training throughput on the quickstart workload, in one run.

Builds ``examples/quickstart.toml`` (FedAvg CNN, Fashion-MNIST), then times, in samples per
second, (a) the global model's evaluation on the whole test set at the batch size the
algorithms use (``EVAL_BATCH``) and (b) the quickstart's local training (its
``[training]``: SGD, batch 32) on the first devices' own data, and prints the ratio
evaluation / training (the population-scale target is >= 3). The two alternate, one
evaluation then one pass over the devices per repeat, so that both see the same machine;
each is timed in wall time and in CPU time (``time.process_time``, which other processes
on a shared machine inflate much less), and the rates are the medians over ``--repeats``.
Run from the repo root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evaluation.py [--devices 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedge.algorithms.base import EVAL_BATCH
from fedge.experiment.build import Experiment, build
from fedge.experiment.config import load_config
from fedge.learning import evaluate, load_state
from fedge.learning.training import local_train

Timing = tuple[int, float, float]
"""Samples, wall seconds, CPU seconds."""


def _evaluate_once(exp: Experiment) -> Timing:
    load_state(exp.model, exp.initial_state)
    wall, cpu = time.perf_counter(), time.process_time()
    evaluate(exp.model, exp.test, batch_size=EVAL_BATCH)
    return len(exp.test), time.perf_counter() - wall, time.process_time() - cpu


def _train_once(exp: Experiment, devices: int, repeat: int) -> Timing:
    model, train, cfg = exp.model, exp.train, exp.config.training
    samples, elapsed, cpu_s = 0, 0.0, 0.0
    for i, idx in enumerate(exp.parts[:devices]):
        load_state(model, exp.initial_state)
        data = train.view(idx)
        generator = torch.Generator().manual_seed(1000 * repeat + i)
        wall, cpu = time.perf_counter(), time.process_time()
        result = local_train(model, data, cfg, generator)
        elapsed += time.perf_counter() - wall
        cpu_s += time.process_time() - cpu
        samples += result.samples
    return samples, elapsed, cpu_s


def _rates(timings: list[Timing]) -> tuple[float, float]:
    """Median samples per second over the repeats, by wall time and by CPU time."""
    wall = statistics.median(n / w for n, w, _ in timings)
    cpu = statistics.median(n / c for n, _, c in timings)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/quickstart.toml")
    parser.add_argument("--devices", type=int, default=5, help="devices whose training is timed")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    exp = build(load_config(args.config))
    evals, trains = [], []
    for r in range(args.repeats):
        evals.append(_evaluate_once(exp))
        trains.append(_train_once(exp, args.devices, r))
    (ev_wall, ev_cpu), (tr_wall, tr_cpu) = _rates(evals), _rates(trains)
    print(f"torch threads {torch.get_num_threads()}, evaluation batch {EVAL_BATCH}")
    print(f"{'samples/s':<34}{'wall':>10}{'cpu':>10}")
    print(f"{f'evaluation ({len(exp.test)} test images)':<34}{ev_wall:>10,.0f}{ev_cpu:>10,.0f}")
    label = f"training ({args.devices} devices' data)"
    print(f"{label:<34}{tr_wall:>10,.0f}{tr_cpu:>10,.0f}")
    print(f"{'evaluation / training':<34}{ev_wall / tr_wall:>10.2f}{ev_cpu / tr_cpu:>10.2f}")


if __name__ == "__main__":
    main()

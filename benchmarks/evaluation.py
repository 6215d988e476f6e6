"""Evaluation against training throughput on the quickstart workload, in one run.

Builds ``examples/quickstart.toml`` (FedAvg CNN, Fashion-MNIST), then times, in samples per
second, (a) the global model's evaluation on the whole test set at the batch size the
algorithms use (``EVAL_BATCH``) and (b) the quickstart's local training (its
``[training]``: SGD, batch 32) on the first devices' own data, and prints the ratio
evaluation / training (the population-scale target is >= 3). Repeated ``--repeats`` times;
medians. Run from the repo root::

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


def _eval_rate(exp: Experiment, repeats: int) -> float:
    model, test = exp.model, exp.test
    load_state(model, exp.initial_state)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        evaluate(model, test, batch_size=EVAL_BATCH)
        rates.append(len(test) / (time.perf_counter() - started))
    return statistics.median(rates)


def _train_rate(exp: Experiment, devices: int, repeats: int) -> float:
    model, train = exp.model, exp.train
    cfg = exp.config.training
    parts = exp.parts[:devices]
    rates = []
    for r in range(repeats):
        samples, elapsed = 0, 0.0
        for i, idx in enumerate(parts):
            load_state(model, exp.initial_state)
            data = train.view(idx)
            generator = torch.Generator().manual_seed(1000 * r + i)
            started = time.perf_counter()
            result = local_train(model, data, cfg, generator)
            elapsed += time.perf_counter() - started
            samples += result.samples
        rates.append(samples / elapsed)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/quickstart.toml")
    parser.add_argument("--devices", type=int, default=5, help="devices whose training is timed")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    exp = build(load_config(args.config))
    evaluation = _eval_rate(exp, args.repeats)
    training = _train_rate(exp, args.devices, args.repeats)
    print(f"torch threads {torch.get_num_threads()}, evaluation batch {EVAL_BATCH}")
    print(f"evaluation {evaluation:,.0f} samples/s ({len(exp.test)} test images)")
    print(f"training   {training:,.0f} samples/s (local training of {args.devices} devices)")
    print(f"evaluation / training = {evaluation / training:.2f}")


if __name__ == "__main__":
    main()

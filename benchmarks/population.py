"""Cost of a population: build time, time per round and peak memory as the devices grow.

Each case runs in a fresh process (so its peak RSS is its own): it builds the experiment
(system, data, model, apps), then runs a few FedAvg rounds with a fixed cohort, and reports

* ``build_s`` and ``build_us_per_device``: the time of ``fedge.experiment.build``;
* ``round_s``: the mean wall time of a round (the cohort trains; no evaluation);
* ``peak_rss_mib``: the process's peak resident memory;
* ``apps_made``: device apps that exist after the rounds (made on first use);
* ``copies_mib``: what per-device copies of the samples would have added (device datasets
  are index views, so this memory is not spent; Fashion-MNIST only).

``--stateful topk`` gives every device state: a top-k compressor (ratio 0.1) with error
feedback on the device uplink, so each device keeps its residual (a model's worth of
floats); ``--stateful fedper`` (Fashion-MNIST only: personalization needs a pooled dataset)
keeps each device's head. ``--state-mb`` sets ``[population] state_memory_mb``; the rows then
add ``state_mib`` (the resident state at the end), ``state_peak_mib``, ``evictions``,
``restores`` and ``store_mib`` (the states on disk). ``--model mlp`` makes each residual
a 2 x 200 MLP's (53k floats) instead of the logistic model's 610.

Cases: Fashion-MNIST (60,000 training samples, so at most 60,000 devices; the MLP keeps the
rounds short) at 1k / 10k / 50k devices with a cohort of 10, and Synthetic(1, 1) at 1k /
100k / 1M devices with a cohort of 100 and the logistic model. Run from the repo root::

    .venv/bin/python benchmarks/population.py                      # every case, ~5 minutes
    .venv/bin/python benchmarks/population.py --cases synthetic:1000000 --rounds 2
    .venv/bin/python benchmarks/population.py --cases synthetic:100000 --rounds 20 \
        --stateful topk --state-mb 4
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from scale import fresh_process, measure

CASES = (
    "fashion:1000",
    "fashion:10000",
    "fashion:50000",
    "synthetic:1000",
    "synthetic:100000",
    "synthetic:1000000",
)


def _config(
    dataset: str,
    devices: int,
    rounds: int,
    stateful: str | None = None,
    state_mb: float = 0,
    model: str | None = None,
) -> Any:
    from fedge.experiment.config import ExperimentConfig

    fashion = dataset == "fashion"
    data: dict[str, Any] = (
        {"dataset": "fashion_mnist", "partition": "iid", "test_limit": 1000}
        if fashion
        else {"dataset": "leaf_synthetic", "synthetic": {"alpha": 1.0, "beta": 1.0}}
    )
    extra: dict[str, Any] = {}
    if stateful == "topk":
        extra["compression"] = [{"link": "device-cloud", "method": "topk", "ratio": 0.1}]
    elif stateful == "fedper":
        extra["algorithm"] = "fedper"
    if state_mb:
        extra["population"] = {"state_memory_mb": state_mb}
    return ExperimentConfig.model_validate(
        {
            **extra,
            "name": f"population-{dataset}-{devices}",
            "rounds": rounds,
            "threads": 1,
            "data": data,
            "model": {"name": model or ("mlp" if fashion else "logistic")},
            "training": {"lr": 0.05 if fashion else 0.01, "batch_size": 32 if fashion else 10},
            "federation": {"clients_per_round": 10 if fashion else 100},
            "system": {"edges": 10, "devices": devices, "out_of_coverage": "nearest"},
        }
    )


def run_case(
    case: str,
    rounds: int,
    launched: float | None = None,
    stateful: str | None = None,
    state_mb: float = 0,
    model: str | None = None,
) -> dict[str, Any]:
    """Build and run one case in this process (``scale.measure``); its figures."""
    dataset, devices = case.split(":")
    cfg = _config(dataset, int(devices), rounds, stateful, state_mb, model)
    row, exp = measure(cfg, rounds, launched)
    copies = 0.0
    if exp.federation is None:
        per_sample = 4 * math.prod(exp.train.input_shape) + 8  # float32 features, int64 label
        copies = sum(len(p) for p in exp.parts) * per_sample / 2**20
    return {
        "case": case,
        "devices": int(devices),
        "build_s": row["build_s"],
        "build_us_per_device": round(row["build_s"] / int(devices) * 1e6, 1),
        "round_s": round(row["round_s"], 2),
        "peak_rss_mib": row["peak_rss_mib"],
        "apps_made": row["apps_made"],
        "copies_mib": round(copies, 1),
        "sim_time_s": row["sim_time_s"],
        **_state(exp.nodes.apps),
    }


def _state(apps: Any) -> dict[str, Any]:
    """The state budget's figures (none without a budget)."""
    spill = apps.spill
    if spill is None:
        return {}
    return {
        "state_mib": round(spill.total / 2**20, 2),
        "state_peak_mib": round(spill.peak / 2**20, 2),
        "evictions": spill.evictions,
        "restores": spill.restores,
        "store_mib": round(spill.store.nbytes() / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stateful", choices=("topk", "fedper"), help="give devices state")
    parser.add_argument("--state-mb", type=float, default=0, help="[population] state_memory_mb")
    parser.add_argument("--model", help="model.name (default: mlp / logistic by dataset)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        row = run_case(
            args.one, args.rounds, args.launched, args.stateful, args.state_mb, args.model
        )
        print(json.dumps(row))
        return
    rows = []
    options = ["--rounds", str(args.rounds), "--state-mb", str(args.state_mb)]
    if args.stateful:
        options += ["--stateful", args.stateful]
    if args.model:
        options += ["--model", args.model]
    for case in args.cases:
        rows.append(fresh_process(__file__, ["--one", case, *options]))
        print(json.dumps(rows[-1]), flush=True)
    keys = list(rows[0])
    print("\n" + " | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))


if __name__ == "__main__":
    main()

"""run_experiment(config) -> RunResult: build, run, evaluate, store and report one run."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.algorithms.base import RoundRecord
from fedge.core.errors import FedgeError
from fedge.experiment.build import EVAL_BATCH, Experiment, build
from fedge.experiment.config import ExperimentConfig
from fedge.learning import EvalResult, evaluate, load_state
from fedge.results import PLOTS_DIR, RunStore, plot_run, write_json, write_report, write_rows_csv

SUMMARY_KEYS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "loss",
    "rounds",
    "sim_time_s",
    "wall_time_s",
    "bytes_up",
    "bytes_down",
    "energy_j",
)


PER_ROUND_COUNTS = (
    "handover_redirected",
    "handover_lost",
    "dropped",
    "late",
    "transmission_latency_s",
    "latency_upload_s",
    "latency_exchange_s",
    "latency_cloud_up_s",
    "latency_cloud_down_s",
    "latency_handover_s",
    "latency_d2d_s",
)
"""Cumulative transport counters and latencies also reported per round (``round_<name>``)."""
SPREAD_PREFIXES = ("accuracy_", "global_")
"""Evaluation figures across nodes (min / max over edges or devices, the global test set)."""
SUMMED_PREFIXES = (
    "bytes_",
    "energy_j",
    "sim_time_s",
    "wall_time_s",
    "latency_",
    "transmission_latency_s",
    "handover_",
)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_dir: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]


def versions() -> dict[str, str]:
    import pydantic
    import torch

    import fedge

    return {
        "fedge": fedge.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pydantic": pydantic.__version__,
    }


class _Observer:
    """Evaluates, records and displays each round; stops at the target accuracy."""

    def __init__(self, exp: Experiment, store: RunStore, run_id: str, bar: Any) -> None:
        self.exp, self.store, self.run_id, self.bar = exp, store, run_id, bar
        self.rows: list[dict[str, Any]] = []
        self.last_eval: EvalResult | None = None
        self.started_s = time.perf_counter()
        self.previous_s = 0.0

    def evaluate(self, record: RoundRecord) -> EvalResult:
        load_state(self.exp.model, record.state)
        self.last_eval = evaluate(self.exp.model, self.exp.test, batch_size=EVAL_BATCH)
        return self.last_eval

    def _handovers(self, now_s: float) -> int:
        """Handover events on the clock since the previous round (0 without mobility)."""
        if self.exp.config.system.mobility == "static":
            return 0
        events = self.exp.system.handovers(self.previous_s, now_s)
        self.previous_s = now_s
        return len(events)

    def __call__(self, record: RoundRecord) -> bool:
        cfg = self.exp.config
        r = record.round
        due = r % cfg.federation.evaluate_every == 0 or r == cfg.rounds
        row: dict[str, Any] = {"round": r}
        if due and not record.evaluated:
            row.update(self.evaluate(record).as_dict())
        row.update(record.metrics)
        evaluated = "accuracy" in row
        row.update(self.exp.transport.stats())
        previous = self.rows[-1] if self.rows else {}
        for key in PER_ROUND_COUNTS:
            row[f"round_{key}"] = row.get(key, 0.0) - previous.get(key, 0.0)
        row["handovers"] = float(self._handovers(row["sim_time_s"]))
        row["wall_time_s"] = time.perf_counter() - self.started_s
        self.rows.append(row)
        self.store.log_round(self.run_id, r, row)
        if self.bar is not None:
            self.bar.update(1)
            if evaluated:
                self.bar.set_postfix(acc=f"{row['accuracy']:.4f}", sim=f"{row['sim_time_s']:.0f}s")
        target = cfg.target_accuracy
        reached = evaluated and target is not None and row["accuracy"] >= target
        return bool(reached and cfg.stop_at_target)


def _progress(enabled: bool, total: int, name: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="round", dynamic_ncols=True)


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
) -> RunResult:
    """Build the experiment, run it on its engine and write the run directory."""
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    exp = build(config)
    store = RunStore(config.output.store)
    root = Path(out_dir if out_dir is not None else config.output.dir)
    resolved, packages = config.model_dump(), versions()
    run_id = store.create_run(config.name, resolved, config.seed, packages, "")
    run_dir = root / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    store.set_run_dir(run_id, str(run_dir))
    write_json(resolved, run_dir / "config.json")
    write_json({"seed": config.seed, "versions": packages}, run_dir / "versions.json")
    write_json(exp.partition_report(), run_dir / "partition.json")
    bar = _progress(
        config.output.progress if progress is None else progress, config.rounds, config.name
    )
    observer = _Observer(exp, store, run_id, bar)
    try:
        exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, config.rounds, observer)
    except BaseException:
        store.finish(run_id, {}, status="failed")
        store.close()
        raise
    finally:
        exp.nodes.close()
        if bar is not None:
            bar.close()
    summary = _summarise(observer)
    summary.update(_final_outputs(exp, run_dir))
    _write_outputs(exp, run_dir, observer, summary)
    store.finish(run_id, summary)
    store.close()
    if echo is not None:
        echo(f"run {run_id} written to {run_dir}")
    return RunResult(run_id, run_dir, summary, observer.rows)


def _summarise(observer: _Observer) -> dict[str, Any]:
    if not observer.rows:
        raise FedgeError("the run produced no rounds")
    last = observer.rows[-1]
    evaluated = [row for row in observer.rows if "accuracy" in row]
    final = evaluated[-1] if evaluated else {}
    summary: dict[str, Any] = {k: final.get(k, math.nan) for k in SUMMARY_KEYS[:5]}
    summary.update({k: v for k, v in final.items() if k.startswith(SPREAD_PREFIXES)})
    summary["rounds"] = last["round"]
    for key, value in last.items():
        if key.startswith(SUMMED_PREFIXES):
            summary[key] = value
    target = observer.exp.config.target_accuracy
    if target is not None:
        hit = next((row for row in evaluated if row["accuracy"] >= target), None)
        summary["target_accuracy"] = target
        summary["rounds_to_target"] = hit["round"] if hit else None
        summary["sim_time_to_target_s"] = hit["sim_time_s"] if hit else None
        summary["transmission_latency_to_target_s"] = hit["transmission_latency_s"] if hit else None
    return summary


def _final_outputs(exp: Experiment, run_dir: Path) -> dict[str, Any]:
    """A coordinator may expose ``final_outputs(run_dir) -> Mapping``: it writes its own
    files into the run directory after the last round and returns figures for the summary."""
    hook = getattr(exp.coordinator, "final_outputs", None)
    return dict(hook(run_dir)) if callable(hook) else {}


def _write_outputs(exp: Experiment, run_dir: Path, obs: _Observer, summary: dict[str, Any]) -> None:
    write_rows_csv(obs.rows, run_dir / "metrics.csv")
    write_json(summary, run_dir / "summary.json")
    confusion = obs.last_eval.confusion if obs.last_eval is not None else None
    names = list(exp.test.class_names) or None
    if confusion is not None:
        write_json(
            {"matrix": confusion.tolist(), "class_names": names or []}, run_dir / "confusion.json"
        )
    plots_dir = run_dir / PLOTS_DIR
    images = plot_run(obs.rows, plots_dir, confusion, names) if exp.config.output.plots else []
    write_report(run_dir, summary, obs.rows, exp.config.model_dump(), images, title=exp.config.name)

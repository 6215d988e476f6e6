"""The observer of a run: evaluates, logs and displays each round, decides when the run
stops, and hands each logged round to a checkpointer."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from fedge.aggregation.defence import detection_scores
from fedge.algorithms.base import EVAL_BATCH, RoundRecord
from fedge.core.update import ModelState
from fedge.experiment.build import Experiment
from fedge.learning import EvalResult, evaluate, load_state
from fedge.results import RunStore, format_value
from fedge.results.trackers import Trackers

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

Checkpointer = Callable[[RoundRecord, dict[str, Any]], None]
"""Called after each round with the record and the observer's snapshot (its own state)."""


def progress_note(rows: list[dict[str, Any]]) -> str:
    """What the progress bar shows beside its count and ETA: the latest accuracy (and the
    round it is from) and the simulated time so far."""
    parts = []
    evaluated = next((row for row in reversed(rows) if "accuracy" in row), None)
    if evaluated is not None:
        parts.append(f"acc {evaluated['accuracy']:.4f} (r{evaluated['round']})")
    if rows and "sim_time_s" in rows[-1]:
        parts.append(f"sim {format_value('sim_time_s', rows[-1]['sim_time_s'])} s")
    return ", ".join(parts)


class RoundObserver:
    """Evaluates, records and displays each round; stops at the target accuracy; hands each
    round to the checkpointer once it is logged."""

    def __init__(
        self,
        exp: Experiment,
        store: RunStore,
        run_id: str,
        bar: Any,
        checkpoint: Checkpointer | None = None,
        trackers: Trackers | None = None,
    ) -> None:
        self.exp, self.store, self.run_id, self.bar = exp, store, run_id, bar
        self.checkpoint = checkpoint
        self.trackers = trackers
        """TensorBoard / MLflow, fed the same rows as the store."""
        self.state: ModelState = exp.initial_state
        """The global model after the last round observed."""
        self.rows: list[dict[str, Any]] = []
        self.last_eval: EvalResult | None = None
        self.started_s = time.perf_counter()
        self.previous_s = 0.0
        self.stop_reason: str | None = None
        """Why the run stopped before its last round (a privacy budget), if it did."""

    def snapshot(self, stop: bool) -> dict[str, Any]:
        """What carries over to the next round, and whether the run stops here."""
        return {
            "rows": self.rows,
            "previous_s": self.previous_s,
            "last_eval": self.last_eval,
            "stopped": stop,
            "stop_reason": self.stop_reason,
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Continue from a snapshot; wall time goes on from the last row (not the downtime)."""
        self.rows = list(saved["rows"])
        self.previous_s = float(saved["previous_s"])
        self.last_eval = saved["last_eval"]
        self.stop_reason = saved.get("stop_reason")
        wall_s = self.rows[-1]["wall_time_s"] if self.rows else 0.0
        self.started_s = time.perf_counter() - wall_s

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
        self.state = record.state
        r = record.round
        due = r % cfg.federation.evaluate_every == 0 or r == cfg.rounds
        row: dict[str, Any] = {"round": r}
        if due and not record.evaluated:
            row.update(self.evaluate(record).as_dict())
            for probe in self.exp.probes:
                row.update(probe(record.state))
        row.update(record.metrics)
        if cfg.defence.detection != "none":
            row.update(detection_scores(record.flagged, sorted(self.exp.attackers())))
            row["flagged_ids"] = " ".join(record.flagged)
        evaluated = "accuracy" in row
        row.update(self.exp.transport.stats())
        previous = self.rows[-1] if self.rows else {}
        for key in PER_ROUND_COUNTS:
            row[f"round_{key}"] = row.get(key, 0.0) - previous.get(key, 0.0)
        row["handovers"] = float(self._handovers(row["sim_time_s"]))
        row["wall_time_s"] = time.perf_counter() - self.started_s
        self.rows.append(row)
        self.store.log_round(self.run_id, r, row)
        if self.trackers is not None:
            self.trackers.log_round(r, row)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(progress_note(self.rows), refresh=True)
        target = cfg.target_accuracy
        reached = evaluated and target is not None and row["accuracy"] >= target
        stop = bool(reached and cfg.stop_at_target)
        limit = cfg.privacy.max_epsilon
        if limit is not None and r < cfg.rounds and row.get("epsilon_next", 0.0) > limit:
            self.stop_reason = (
                f"privacy.max_epsilon = {limit:g}: stopped after round {r} (epsilon "
                f"{row['epsilon']:.4g}); round {r + 1} would reach {row['epsilon_next']:.4g}"
            )
            stop = True
        if self.checkpoint is not None:
            self.checkpoint(record, self.snapshot(stop))
        return stop

"""run_experiment(config) -> RunResult: build, run, evaluate, store and report one run;
resume_experiment(run_dir) -> RunResult: go on from the run's last checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.core.errors import FedgeError
from fedge.core.files import atomic_write_bytes
from fedge.core.update import ModelState
from fedge.experiment.build import Experiment, build
from fedge.experiment.config import ExperimentConfig
from fedge.experiment.engines import ENGINES, set_threads
from fedge.results import PLOTS_DIR, RunStore, plot_run, write_json, write_report, write_rows_csv
from fedge.results.trackers import check_trackers, close_trackers, open_trackers
from fedge.runs import resume
from fedge.runs.checkpoint import CHECKPOINT_NAME, References
from fedge.runs.observer import Checkpointer, RoundObserver
from fedge.runs.result import RunResult, check_out_dir, discard_run, open_run
from fedge.runs.study import run_study

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


ROBUSTNESS_KEYS = ("attack_success_rate", "flagged", "detection_precision", "detection_recall")
"""Figures of attacked or defended runs, taken from the last evaluated round when present."""
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
    "wire_",
)


def _progress(enabled: bool, total: int, name: str, done: int = 0) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=name, unit="round", dynamic_ncols=True)


@dataclass(frozen=True)
class _Session:
    """A run being executed: its live objects, store row, directory and checkpoint keys."""

    exp: Experiment
    store: RunStore
    run_id: str
    run_dir: Path
    refs: References | None
    """None: this engine writes no checkpoints."""

    def checkpointer(self) -> Checkpointer | None:
        if self.refs is None:
            return None
        return resume.checkpointer(self.exp, self.run_dir, self.refs, self.run_id)


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
    *,
    prepare: Callable[[Experiment], None] | None = None,
    started: Callable[[Path], None] | None = None,
) -> RunResult:
    """Build the experiment, run it on its engine and write the run directory; the local
    engine writes ``checkpoint.pkl`` there after every round (see resume_experiment).

    ``prepare`` may change the built experiment before anything runs (a driver swaps in its
    own transport; a class with ``checkpoint_by_reference = True`` is then named in the
    checkpoints, not stored); ``started`` gets the run directory once it exists.
    """
    if config.study is not None:  # not training rounds: see fedge.runs.study
        return run_study(config, out_dir, progress, echo)
    engine = ENGINES.get(config.engine, "engine")
    launch = engine.launcher()
    if launch is not None and prepare is None:
        result: RunResult = launch(config, out_dir, echo)
        return result
    check_out_dir(config, out_dir)
    check_trackers(config.output)
    set_threads(config)
    exp = build(config)
    if prepare is not None:
        prepare(exp)
    refs = resume.references(exp) if engine.resumable else None
    store = RunStore(config.output.store)
    run_id, run_dir = open_run(store, config, out_dir, exp.data_source)
    try:
        resume.attach_state(exp, run_dir)
        resume.keep_fcd(config, run_dir)
        write_json(exp.partition_report(), run_dir / "partition.json")
        _announce_warnings(exp, run_dir, echo)
        if started is not None:
            started(run_dir)
    except BaseException:
        discard_run(store, run_id, run_dir)
        store.close()
        raise
    with resume.RunLock(run_dir):
        session = _Session(exp, store, run_id, run_dir, refs)
        return _execute(session, exp.initial_state, 1, None, progress, echo)


WARNINGS_FILE = "warnings.json"
"""The run's warnings (settings its algorithm does not use), also shown in its report."""


def _announce_warnings(exp: Experiment, run_dir: Path, echo: Callable[[str], None] | None) -> None:
    """Say each of the build's warnings once, and keep them with the run."""
    if not exp.warnings:
        return
    write_json(list(exp.warnings), run_dir / WARNINGS_FILE)
    for line in exp.warnings:
        (echo or _stderr)(f"warning: {line}")


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def resume_experiment(
    run_dir: str | Path,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
    *,
    prepare: Callable[[Experiment], None] | None = None,
    started: Callable[[Path], None] | None = None,
) -> RunResult:
    """Go on with an interrupted run of the local engine from its last checkpoint, with the
    config stored in ``run_dir``: same run id, rows and files; it ends bit-identical to an
    uninterrupted run. Nothing changes when the directory or its checkpoint is unusable.
    ``prepare`` and ``started`` as in run_experiment (``prepare`` sees the fresh build)."""
    point = resume.resume_point(run_dir)
    config = point.config
    if ENGINES.get(config.engine, "engine").launch is not None and prepare is None:
        raise FedgeError(
            f"{point.run_dir} is a run of engine {config.engine!r}, a set of processes: resume "
            f"it in its cloud process with `fedge serve cloud --config CONFIG --resume "
            f"{point.run_dir}` (edges and devices attach again as they come back)"
        )
    with resume.RunLock(point.run_dir):
        store = RunStore(config.output.store)
        try:
            resume.check_unfinished(store, point)
            set_threads(config)
            resume.replay_fcd(config, point.run_dir)
            fresh = build(config)
            if prepare is not None:
                prepare(fresh)
            refs = resume.references(fresh)
            meta = resume.checkpoint_meta(config, point.run_id)
            exp, ckpt = resume.restore(fresh, point.run_dir, refs, meta)
            store.reopen(point.run_id, ckpt.round)
        except BaseException:
            store.close()
            raise
        if fresh.nodes is not exp.nodes:
            fresh.nodes.close()
        first = config.rounds + 1 if ckpt.extra.get("stopped") else ckpt.round + 1
        if started is not None:
            started(point.run_dir)
        session = _Session(exp, store, point.run_id, point.run_dir, refs)
        return _execute(session, ckpt.state, first, ckpt.extra, progress, echo)


def _execute(
    s: _Session,
    state: ModelState,
    first_round: int,
    saved: Mapping[str, Any] | None,
    progress: bool | None,
    echo: Callable[[str], None] | None,
) -> RunResult:
    """Rounds ``first_round..rounds``, then the summary, report and store row."""
    exp, config = s.exp, s.exp.config
    enabled = config.output.progress if progress is None else progress
    bar = _progress(enabled, config.rounds, config.name, first_round - 1)
    observer = RoundObserver(exp, s.store, s.run_id, bar, s.checkpointer())
    observer.state = state
    if saved is not None:
        observer.restore(saved)
    try:
        observer.trackers = open_trackers(
            config.output, config.model_dump(), config.name, s.run_id, s.run_dir
        )
        if first_round <= config.rounds:
            coordinator = exp.coordinator
            coordinator.run(exp.transport, state, exp.rng, config.rounds, observer, first_round)
    except BaseException as exc:
        _stopped(s, observer, exc, echo, fresh=first_round == 1)
        raise
    finally:
        exp.nodes.close()
        if bar is not None:
            bar.close()
    try:
        summary = _summarise(observer)
        summary.update(_final_outputs(exp, s.run_dir))
        _write_outputs(exp, s.run_dir, observer, summary)
    except BaseException as exc:
        _stopped(s, observer, exc, echo)
        raise
    if observer.trackers is not None:
        observer.trackers.finish("finished", summary, s.run_dir)
    s.store.finish(s.run_id, summary)
    s.store.close()
    if echo is not None and observer.stop_reason is not None:
        echo(observer.stop_reason)
    if echo is not None:
        echo(f"run {s.run_id} written to {s.run_dir}")
    return RunResult(s.run_id, s.run_dir, summary, observer.rows)


def _stopped(
    s: _Session,
    observer: RoundObserver,
    exc: BaseException,
    echo: Callable[[str], None] | None,
    fresh: bool = False,
) -> None:
    """Mark the run interrupted (Ctrl-C) or failed, and say how to go on when it can; a
    ``fresh`` run that stopped before its first round leaves nothing behind."""
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    if observer.trackers is not None:
        close_trackers(observer.trackers, status, s.run_dir)
    if fresh and not observer.rows:
        discard_run(s.store, s.run_id, s.run_dir)
        s.store.close()
        return
    s.store.finish(s.run_id, {}, status=status)
    s.store.close()
    if echo is not None and observer.rows and (s.run_dir / CHECKPOINT_NAME).is_file():
        last = observer.rows[-1]["round"]
        echo(
            f"run {s.run_id} stopped after round {last}; go on with: fedge run --resume {s.run_dir}"
        )


MODEL_FILE = "model.pt"
"""The final global model (``torch.load(path, weights_only=True)`` gives name -> tensor); for
algorithms whose models stay on the edges or devices, the initial model they started from."""


def _write_model(state: ModelState, path: Path) -> None:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _summarise(observer: RoundObserver) -> dict[str, Any]:
    if not observer.rows:
        raise FedgeError("the run produced no rounds")
    last = observer.rows[-1]
    evaluated = [row for row in observer.rows if "accuracy" in row]
    final = evaluated[-1] if evaluated else {}
    summary: dict[str, Any] = {k: final.get(k, math.nan) for k in SUMMARY_KEYS[:5]}
    summary.update({k: v for k, v in final.items() if k.startswith(SPREAD_PREFIXES)})
    summary.update({k: final[k] for k in ROBUSTNESS_KEYS if k in final})
    summary["rounds"] = last["round"]
    for key, value in last.items():
        if key.startswith(SUMMED_PREFIXES):
            summary[key] = value
    if summary.get("bytes_up") and "bytes_dense_up" in summary:
        summary["compression_ratio_up"] = summary["bytes_dense_up"] / summary["bytes_up"]
    if "epsilon" in last:
        summary["epsilon"] = last["epsilon"]
        summary["delta"] = observer.exp.config.privacy.delta
    if observer.stop_reason is not None:
        summary["stop_reason"] = observer.stop_reason
    target = observer.exp.config.target_accuracy
    if target is not None:
        hit = next((row for row in evaluated if row["accuracy"] >= target), None)
        summary["target_accuracy"] = target
        summary["rounds_to_target"] = hit["round"] if hit else None
        summary["sim_time_to_target_s"] = hit["sim_time_s"] if hit else None
        latency_s = hit.get("transmission_latency_s") if hit else None  # simulated engines only
        summary["transmission_latency_to_target_s"] = latency_s
    return summary


def _final_outputs(exp: Experiment, run_dir: Path) -> dict[str, Any]:
    """A coordinator may expose ``final_outputs(run_dir) -> Mapping``: it writes its own
    files into the run directory after the last round and returns figures for the summary."""
    hook = getattr(exp.coordinator, "final_outputs", None)
    return dict(hook(run_dir)) if callable(hook) else {}


def _write_outputs(
    exp: Experiment, run_dir: Path, obs: RoundObserver, summary: dict[str, Any]
) -> None:
    write_rows_csv(obs.rows, run_dir / "metrics.csv")
    write_json(summary, run_dir / "summary.json")
    _write_model(obs.state, run_dir / MODEL_FILE)
    confusion = obs.last_eval.confusion if obs.last_eval is not None else None
    names = list(exp.test.class_names) or None
    if confusion is not None:
        write_json(
            {"matrix": confusion.tolist(), "class_names": names or []}, run_dir / "confusion.json"
        )
    plots_dir = run_dir / PLOTS_DIR
    images = plot_run(obs.rows, plots_dir, confusion, names) if exp.config.output.plots else []
    write_report(run_dir, summary, obs.rows, exp.config.model_dump(), images, title=exp.config.name)

"""The study seam: simulations that are not training rounds (task scheduling now, edge
caching next) on the same system model, simulated clock, run store, report and
``fedge compare`` as training runs.

A study is a :class:`StudySpec` in ``STUDIES``. A config with ``study = "<name>"`` runs it
instead of training; its ``[study_params]`` table is the study's own settings section.
``run_study`` (reached through ``run_experiment``, so ``fedge run`` and ``fedge compare``
need nothing else) stores a study like a training run: one store row per step, metrics.csv,
summary.json, plots and report.html. There are no checkpoints: a study's rows are cheap to
recompute, so an interrupted study is run again rather than resumed.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from fedge.core.errors import ConfigError, FedgeError
from fedge.core.node import derive_seed
from fedge.core.registry import Registry
from fedge.core.settings import Section, config_error
from fedge.experiment.config import ExperimentConfig
from fedge.experiment.systems import build_system
from fedge.results import PLOTS_DIR, RunStore, plot_run, write_json, write_report, write_rows_csv
from fedge.results.trackers import Trackers, check_trackers, close_trackers, open_trackers
from fedge.runs.result import RunResult, discard_run, open_run
from fedge.system.clock import SimClock
from fedge.system.model import SystemModel

BUILTIN_STUDIES = "fedge.studies"
"""The package whose import registers the built-in studies. It sits above ``fedge.runs``, so
it is named here and imported by name when a study is looked up, never imported directly."""
RESERVED_KEYS = ("step", "sim_time_s", "wall_time_s")
"""Row keys that run_study writes itself; a study's own rows must not use them."""
TOTAL_PREFIX = "total_"
"""summary.json holds ``total_<key>`` (the sum over all steps) for each key a spec sums."""


@dataclass(frozen=True)
class StudyContext:
    """What a study's ``run`` gets: the whole config, its own validated settings, the system
    model built from ``[system]`` with the run's seed, a simulated clock at 0, a seeded
    generator of its own and the run directory (for files of its own)."""

    config: ExperimentConfig
    settings: Any
    """The study's settings section (an instance of its spec's ``settings``)."""
    system: SystemModel
    clock: SimClock
    """Starts at 0; each row's ``sim_time_s`` is read from it after the study yields the row."""
    rng: np.random.Generator
    """Seeded with ``derive_seed(seed, "study", spec.name)``."""
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    """Values the study adds to summary.json (over all steps, e.g. overall ratios); they
    replace the last row's values of the same keys."""


StudyRun = Callable[[StudyContext], Iterator[dict[str, float]]]
"""Yields one row of numbers per step, having advanced ``ctx.clock`` to that step's time."""


@dataclass(frozen=True)
class StudySpec:
    """A registered study: its settings section (both its ``[study_params]`` schema and its
    input) and the generator of its rows."""

    name: str
    description: str
    settings: type[Section]
    run: StudyRun
    summed: tuple[str, ...] = ()
    """Row keys that count something per step; the summary adds their totals over all steps
    as ``total_<key>`` (every other key keeps its last value)."""
    sweep_metrics: tuple[str, ...] = ()
    """Summary keys that ``fedge compare`` also plots against every numeric varied key
    (e.g. hit ratio against cache size), one line per value of the other varied keys."""
    section: str | None = None
    """The top-level config table that holds the settings (a field of ExperimentConfig, e.g.
    ``caching``); None: the free ``[study_params]`` table."""


STUDIES: Registry[StudySpec] = Registry(
    "study", lambda obj: isinstance(obj, StudySpec), "a StudySpec"
)


def register_study(spec: StudySpec) -> StudySpec:
    """Add ``spec`` to STUDIES under its name and return it."""
    STUDIES.add(spec.name, spec, spec.description)
    return spec


def find_study(name: str) -> StudySpec:
    """The study named ``name`` (or an import path to a StudySpec); a miss lists them all."""
    importlib.import_module(BUILTIN_STUDIES)
    return STUDIES.get(name, "study")


def check_study(config: ExperimentConfig) -> tuple[StudySpec, Section]:
    """The config's study and its settings, validated (ConfigError naming ``study`` or
    ``study_params.<key>``, or the spec's own section); nothing runs."""
    if config.study is None:
        raise ConfigError("study", None, "a study name: this config is a training run")
    spec = find_study(config.study)
    if spec.section is not None:
        if config.study_params:
            raise ConfigError(
                "study_params",
                config.study_params,
                f"empty: study {spec.name!r} reads [{spec.section}]",
            )
        settings = getattr(config, spec.section, None)
        if settings is None:
            settings = spec.settings()  # the section left out: its defaults
        if not isinstance(settings, spec.settings):
            raise FedgeError(f"study {spec.name!r}: config has no [{spec.section}] section")
        return spec, settings
    try:
        settings = spec.settings.model_validate(config.study_params)
    except ValidationError as exc:
        raise config_error(exc, spec.settings, "study_params") from None
    return spec, settings


def run_study(
    config: ExperimentConfig,
    out_dir: str | Path | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
) -> RunResult:
    """Validate the study, then run it as a run of the store: config.json, versions.json and
    the store row first, then one store row per step (``round`` = ``step``), metrics.csv,
    summary.json, plots and report.html. The run is marked finished, or failed (interrupted
    on Ctrl-C) if anything raises. No checkpoints: a study is cheap to run again."""
    spec, settings = check_study(config)
    system = build_system(config.system, config.seed)
    store = RunStore(config.output.store)
    check_trackers(config.output)
    run_id, run_dir = open_run(store, config, out_dir)
    rng = np.random.default_rng(derive_seed(config.seed, "study", spec.name))
    ctx = StudyContext(config, settings, system, SimClock(0.0), rng, run_dir)
    trackers = Trackers()
    try:
        trackers = open_trackers(config.output, config.model_dump(), config.name, run_id, run_dir)
        rows = _steps(spec, ctx, store, run_id, progress, trackers)
        summary = {**summarise(rows, spec.summed), **ctx.summary}
        _write_outputs(config, run_dir, rows, summary)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        close_trackers(trackers, status, run_dir)
        if not store.rounds(run_id):  # stopped before its first step: nothing to keep
            discard_run(store, run_id, run_dir)
        else:
            store.finish(run_id, {}, status=status)
        store.close()
        raise
    trackers.finish("finished", summary, run_dir)
    store.finish(run_id, summary)
    store.close()
    if echo is not None:
        echo(f"run {run_id} written to {run_dir}")
    return RunResult(run_id, run_dir, summary, rows)


def _steps(
    spec: StudySpec,
    ctx: StudyContext,
    store: RunStore,
    run_id: str,
    progress: bool | None,
    trackers: Trackers,
) -> list[dict[str, Any]]:
    """Every row of the study, each completed with step, clock time and wall time and
    logged to the store as it comes."""
    enabled = ctx.config.output.progress if progress is None else progress
    bar = _progress_bar(spec.name) if enabled else None
    started_s = time.perf_counter()
    rows: list[dict[str, Any]] = []
    try:
        for values in spec.run(ctx):
            taken = [key for key in RESERVED_KEYS if key in values]
            if taken:
                raise FedgeError(f"study {spec.name!r} yielded {taken[0]!r}: run_study sets it")
            step = len(rows) + 1
            row = {"step": step, **values, "sim_time_s": ctx.clock.now()}
            row["wall_time_s"] = time.perf_counter() - started_s
            store.log_round(run_id, step, row)
            trackers.log_round(step, row)
            rows.append(row)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if not rows:
        raise FedgeError(f"study {spec.name!r} produced no steps")
    return rows


def _progress_bar(name: str) -> Any:
    from tqdm import tqdm

    return tqdm(desc=name, unit="step", dynamic_ncols=True)


def summarise(rows: Sequence[Mapping[str, Any]], summed: Sequence[str] = ()) -> dict[str, Any]:
    """The last row's values (``step`` becomes ``steps``) and, for each key in ``summed``,
    ``total_<key>``: its sum over the rows that have it."""
    summary = {k: v for k, v in rows[-1].items() if k != "step"}
    summary["steps"] = len(rows)
    for key in summed:
        values = [row[key] for row in rows if key in row]
        if values:
            summary[TOTAL_PREFIX + key] = sum(values)
    return summary


def _write_outputs(
    config: ExperimentConfig, run_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any]
) -> None:
    write_rows_csv(rows, run_dir / "metrics.csv")
    write_json(summary, run_dir / "summary.json")
    images = plot_run(rows, run_dir / PLOTS_DIR) if config.output.plots else []
    write_report(run_dir, summary, rows, config.model_dump(), images, title=config.name)

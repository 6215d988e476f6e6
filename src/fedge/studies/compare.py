"""``fedge compare``: run every variant of a config for several seeds; means with 95% CIs.

A variant is one point of the Cartesian product of the ``--vary key=v1,v2`` lists; each
value is read like a ``--set`` value (TOML, else a plain string). Every variant and seed is
validated before the first run starts.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.core.errors import ConfigError, FedgeError
from fedge.experiment.build import check_names
from fedge.experiment.config import ExperimentConfig, apply_overrides, load_config
from fedge.results import PLOTS_DIR, plot_comparison, write_json, write_rows_csv
from fedge.results.comparison import (
    format_comparison_table,
    format_mean_ci,
    is_finite_number,
    mean_curve,
    write_comparison_report,
)
from fedge.results.plots import plot_lines
from fedge.results.recipe import ci95
from fedge.runs.result import RunResult
from fedge.runs.run import ROBUSTNESS_KEYS, run_experiment
from fedge.runs.study import check_study, find_study

METRICS = (
    "accuracy", "precision", "recall", "f1", "wall_time_s", "sim_time_s",
    "transmission_latency_s", "bytes_up", "epsilon",
)  # fmt: skip
Vary = tuple[str, list[str]]
Planned = list[tuple["Variant", list[ExperimentConfig]]]


@dataclass(frozen=True)
class Variant:
    """One combination of varied values: parsed values and the ``key=value`` overrides."""

    values: dict[str, Any]
    overrides: tuple[str, ...]

    @property
    def label(self) -> str:
        return ", ".join(self.overrides) or "base"

    @property
    def texts(self) -> dict[str, str]:
        """Each varied key with its value as typed, for display."""
        pairs = (item.partition("=") for item in self.overrides)
        return {key: text for key, _, text in pairs}


@dataclass(frozen=True)
class Stat:
    """Mean and 95% confidence half-width of one metric over a variant's seeds."""

    mean: float
    ci95: float
    values: list[float]


@dataclass(frozen=True)
class VariantResult:
    variant: Variant
    seeds: list[int]
    runs: list[RunResult]
    metrics: dict[str, Stat]


@dataclass(frozen=True)
class ComparisonResult:
    comparison_dir: Path
    results: list[VariantResult]
    images: list[Path]
    report: Path

    def table(self) -> str:
        """The plain-text table printed by ``fedge compare``."""
        rows, columns = table_rows(self.results)
        return format_comparison_table(rows, columns, present_metrics(self.results))


def split_values(text: str) -> list[str]:
    """Split at commas outside brackets, braces and quotes (escaped quotes not handled)."""
    items: list[str] = []
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items]


def parse_vary(text: str) -> Vary:
    """``key=v1,v2,...`` -> (key, [raw value texts]); a malformed item raises ConfigError."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--vary", text, "dotted.key=v1,v2,..., e.g. training.lr=0.1,0.01")
    items = split_values(values)
    if not values.strip() or not all(items):
        raise ConfigError("--vary", text, "a non-empty comma-separated list of values")
    return key.strip(), items


def _value(text: str) -> Any:
    """A value read exactly as ``--set`` reads it."""
    return apply_overrides({}, [f"v={text}"])["v"]


def variants(varies: Sequence[Vary]) -> list[Variant]:
    """The Cartesian product of the varied lists, first key slowest."""
    keys = [key for key, _ in varies]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ConfigError("--vary", duplicates[0], "each key at most once")
    out = []
    for combo in itertools.product(*(values for _, values in varies)):
        overrides = tuple(f"{k}={v}" for k, v in zip(keys, combo, strict=True))
        out.append(Variant({k: _value(v) for k, v in zip(keys, combo, strict=True)}, overrides))
    return out


def _summary(run: RunResult) -> dict[str, Any]:
    """The run's summary, completed from its last round row for metrics it lacks."""
    last = run.rows[-1] if run.rows else {}
    return {**{k: last[k] for k in METRICS if k in last}, **run.summary}


def study_metrics(summaries: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """A study's metrics: every number in its summaries (studies have no fixed set)."""
    keys: dict[str, None] = {}
    for summary in summaries:
        keys.update({k: None for k, v in summary.items() if is_finite_number(v)})
    return tuple(keys)


def summarise(
    summaries: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRICS
) -> dict[str, Stat]:
    """Mean, 95% CI and values of each metric over the run summaries that report it."""
    out: dict[str, Stat] = {}
    for key in metrics:
        values = [float(s[key]) for s in summaries if is_finite_number(s.get(key))]
        if values:
            out[key] = Stat(float(np.mean(values)), ci95(values), values)
    return out


def _load(config_path: str | Path, overrides: Sequence[str], label: str) -> ExperimentConfig:
    try:
        config = load_config(config_path, overrides)
        check_names(config)
        if config.study is not None:
            check_study(config)
    except FedgeError as exc:
        raise FedgeError(f"variant {label}: {exc}") from None
    return config


def plan(
    config_path: str | Path, varies: Sequence[str], seeds: int, overrides: Sequence[str] = ()
) -> tuple[ExperimentConfig, Planned]:
    """Validate every variant and seed; (base config, [(variant, configs per seed)])."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError("--seeds", seeds, "an integer >= 1")
    found = variants([parse_vary(v) for v in varies])
    base = load_config(config_path, overrides)
    planned: Planned = []
    for variant in found:
        first = _load(config_path, [*overrides, *variant.overrides], variant.label)
        per_seed = [
            _load(config_path, [*overrides, *variant.overrides, f"seed={seed}"], variant.label)
            for seed in range(first.seed, first.seed + seeds)
        ]
        planned.append((variant, per_seed))
    return base, planned


def _comparison_dir(base: ExperimentConfig, out: str | Path | None) -> Path:
    parent = Path(out if out is not None else base.output.dir)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", base.name).strip("-.")[:40] or "run"
    name = f"compare-{time.strftime('%Y%m%d-%H%M%S')}-{slug}"
    directory = parent / name
    if directory.exists():
        directory = parent / f"{name}-{uuid.uuid4().hex[:4]}"
    directory.mkdir(parents=True)
    return directory


def _run_all(
    planned: Planned, runs_dir: Path, progress: bool | None, echo: Callable[[str], None] | None
) -> list[VariantResult]:
    total = sum(len(configs) for _, configs in planned)
    done = 0
    results = []
    bar = _comparison_bar(planned, total, progress)
    for variant, configs in planned:
        runs = []
        for config in configs:
            done += 1
            if echo is not None and bar is None:
                echo(f"[{done}/{total}] {variant.label}, seed={config.seed}")
            if bar is not None:
                bar.set_postfix_str(f"{variant.label}, seed={config.seed}", refresh=True)
            inner = False if bar is not None else progress
            runs.append(run_experiment(config, out_dir=runs_dir, progress=inner))
            if bar is not None:
                bar.update(1)
        summaries = [_summary(run) for run in runs]
        keys = (
            (*METRICS, *ROBUSTNESS_KEYS) if configs[0].study is None else study_metrics(summaries)
        )
        stats = summarise(summaries, keys)
        results.append(VariantResult(variant, [c.seed for c in configs], runs, stats))
    if bar is not None:
        bar.close()
    return results


def _comparison_bar(planned: Planned, total: int, progress: bool | None) -> Any:
    """One bar over every (variant, seed) run, with its ETA; the runs' own bars stay off.
    None when progress is off (``--no-progress`` or ``output.progress = false``)."""
    enabled = planned[0][1][0].output.progress if progress is None else progress
    if not enabled or not total:
        return None
    from tqdm import tqdm

    variants = len(planned)
    seeds = len(planned[0][1])
    desc = f"{variants} variants x {seeds} seeds"
    return tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)


def present_metrics(results: Sequence[VariantResult]) -> list[str]:
    """The metrics that at least one variant reports: METRICS first, in their order, then
    a study's own in the order its summaries list them."""
    extra = [m for r in results for m in r.metrics if m not in METRICS]
    ordered = [*METRICS, *dict.fromkeys(extra)]
    return [m for m in ordered if any(m in r.metrics for r in results)]


def table_rows(results: Sequence[VariantResult]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of varied values, n and ``mean ± ci95`` texts; and the column names."""
    keys = list(results[0].variant.values) if results else []
    metrics = present_metrics(results)
    rows = []
    for r in results:
        row: dict[str, Any] = {**r.variant.texts, "n": len(r.runs)}
        for m in metrics:
            stat = r.metrics.get(m)
            row[m] = format_mean_ci(m, stat.mean, stat.ci95, len(stat.values)) if stat else None
        rows.append(row)
    return rows, [*keys, "n", *metrics]


def _csv_rows(results: Sequence[VariantResult]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row: dict[str, Any] = {**r.variant.values, "n": len(r.runs)}
        for m in present_metrics(results):
            stat = r.metrics.get(m)
            row[f"{m}_mean"] = stat.mean if stat else None
            row[f"{m}_ci95"] = stat.ci95 if stat else None
        rows.append(row)
    return rows


def _json_entry(r: VariantResult) -> dict[str, Any]:
    return {
        "variant": r.variant.values,
        "n": len(r.runs),
        "runs": [run.run_id for run in r.runs],
        "seeds": r.seeds,
        "metrics": {
            m: {"mean": s.mean, "ci95": s.ci95, "values": s.values} for m, s in r.metrics.items()
        },
    }


def _write(directory: Path, base: ExperimentConfig, results: list[VariantResult]) -> list[Path]:
    write_rows_csv(_csv_rows(results), directory / "comparison.csv")
    write_json([_json_entry(r) for r in results], directory / "comparison.json")
    if not base.output.plots:
        return []
    series = {r.variant.label: mean_curve([run.rows for run in r.runs]) for r in results}
    images = plot_comparison(series, directory / PLOTS_DIR)
    if base.study is not None:
        images += plot_sweeps(results, find_study(base.study).sweep_metrics, directory / PLOTS_DIR)
    return images


def plot_sweeps(
    results: Sequence[VariantResult], metrics: Sequence[str], out_dir: Path
) -> list[Path]:
    """``<metric>_vs_<key>.png`` for each metric and each varied key whose values are all
    numbers: the metric's mean over seeds, one line per value of the other varied keys."""
    written: list[Path] = []
    keys = list(results[0].variant.values) if results else []
    for key in keys:
        xs = [r.variant.values[key] for r in results]
        if len(set(xs)) < 2 or not all(is_finite_number(x) for x in xs):
            continue
        for metric in metrics:
            lines: dict[str, list[tuple[float, float]]] = {}
            for r in results:
                if metric in r.metrics:
                    rest = ", ".join(f"{k}={t}" for k, t in r.variant.texts.items() if k != key)
                    lines.setdefault(rest or metric, []).append(
                        (float(r.variant.values[key]), r.metrics[metric].mean)
                    )
            curves = []
            for label, pts in lines.items():
                pts.sort()
                x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
                curves.append((label, x, y))
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{metric}_vs_{key}") + ".png"
            written += plot_lines(out_dir / name, curves, key, metric, f"{metric} by {key}")
    return written


def run_comparison(
    config_path: str | Path,
    varies: Sequence[str],
    seeds: int,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
) -> ComparisonResult:
    """Validate all variants, run each for ``seeds`` seeds and write the comparison files."""
    base, planned = plan(config_path, varies, seeds, overrides)
    directory = _comparison_dir(base, out)
    results = _run_all(planned, directory / "runs", progress, echo)
    images = _write(directory, base, results)
    runs = [
        {"variant": r.variant.label, "seed": run_seed, "run_id": run.run_id, "dir": run.run_dir}
        for r in results
        for run, run_seed in zip(r.runs, r.seeds, strict=True)
    ]
    rows, columns = table_rows(results)
    title = f"Comparison: {base.name}"
    right = ["n", *present_metrics(results)]
    about = _about(config_path, base, varies, seeds)
    report = write_comparison_report(directory, title, rows, columns, images, runs, right, about)
    return ComparisonResult(directory, results, images, report)


def _about(
    config_path: str | Path, base: ExperimentConfig, varies: Sequence[str], seeds: int
) -> list[tuple[str, str]]:
    """What a comparison was, for the head of its page."""
    import fedge

    facts = [
        ("Config", str(config_path)),
        ("Varied", "; ".join(varies) or "nothing (seeds only)"),
        ("Seeds per variant", f"{seeds} (from seed {base.seed})"),
    ]
    if base.study is None:
        facts += [
            ("Algorithm", base.algorithm),
            ("Dataset", f"{base.data.dataset}, partition {base.data.partition}"),
            ("Model", base.model.name),
            ("Rounds", str(base.rounds)),
        ]
    else:
        facts.append(("Study", base.study))
    facts += [
        ("Engine", base.engine),
        (
            "Topology",
            f"{base.system.topology}: {base.system.edges} edges, {base.system.devices} devices",
        ),
        ("Date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("fedge", fedge.__version__),
    ]
    return facts

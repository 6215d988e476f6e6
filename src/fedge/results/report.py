"""The per-run HTML report: one self-contained file (images embedded as data URIs).

``write_report`` renders from values in memory (used at the end of ``fedge run``);
``rebuild_report`` reads a run directory's files back and renders again (``fedge report``).
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from fedge.core.errors import FedgeError
from fedge.results.files import (
    atomic_write_text,
    dumps_json,
    read_json,
    read_rows_csv,
    row_columns,
)
from fedge.results.formatting import format_table, format_value, human_bytes, label
from fedge.results.plots import INSTALL_HINT, plot_run, plotting_available
from fedge.system.toml_writer import to_toml

__all__ = [
    "PLOTS_DIR", "REPORT_NAME", "format_table", "human_bytes", "rebuild_report", "write_report",
]  # fmt: skip

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
VERSIONS_FILE = "versions.json"
WARNINGS_FILE = "warnings.json"
WRITTEN_CONFIG = "config.toml"
PLOTS_DIR = "plots"
SUMMARY_KEYS = (
    "accuracy", "precision", "recall", "f1", "loss", "rounds", "sim_time_s", "wall_time_s",
    "bytes_up", "bytes_down", "energy_j",
)  # fmt: skip
_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_EXPECTED = {
    "summary.json": "a JSON object with the run's summary metrics",
    "config.json": "a JSON object with the run's resolved config",
    "confusion.json": 'a JSON object {"matrix": [[...], ...], "class_names": [...]} '
    "with a square matrix of counts",
}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def _cell(key: str, value: Any) -> str:
    if isinstance(value, Mapping | list | tuple):
        return f"<td><code>{_esc(dumps_json(value).strip())}</code></td>"
    css = ' class="num"' if _is_number(value) else ""
    return f"<td{css}>{_esc(format_value(key, value))}</td>"


def _summary_section(summary: Mapping[str, Any]) -> str:
    keys = [k for k in SUMMARY_KEYS if k in summary]
    keys += [k for k in summary if k not in SUMMARY_KEYS and k != "versions"]
    if not keys:
        return '<h2>Results</h2>\n<p class="note">No summary values.</p>'
    body = "\n".join(
        f'<tr><th title="{_esc(k)}">{_esc(label(k))}</th>{_cell(k, summary[k])}</tr>' for k in keys
    )
    return f'<h2>Results</h2>\n<div class="scroll"><table class="summary">\n{body}\n</table></div>'


def _describe_partition(data: Mapping[str, Any]) -> str:
    name = str(data.get("partition", "?"))
    params = {"dirichlet": "alpha", "regional": "alpha", "shards": "shards_per_client"}
    params["quantity_skew"] = "beta"
    key = params.get(name)
    return f"{name} ({key} = {data[key]})" if key and key in data else name


def _describe_topology(system: Mapping[str, Any]) -> str:
    kind = system.get("topology", "?")
    if kind == "file":
        kind = f"file {system.get('topology_file')}"
    return (
        f"{kind}: {system.get('edges', '?')} edges, {system.get('devices', '?')} devices, "
        f"mobility {system.get('mobility', '?')}"
    )


def _what_ran(run_dir: Path, config: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    """What the run was, before any result: the facts a reader needs to trust the numbers."""
    data = config.get("data") or {}
    versions = record.get("versions") or {}
    facts: list[tuple[str, str]] = [
        ("Name", str(config.get("name", ""))),
        ("Run id", Path(run_dir).name),
    ]
    if config.get("study"):
        facts.append(("Study", str(config["study"])))
    else:
        facts += [
            ("Algorithm", str(config.get("algorithm", ""))),
            ("Dataset", str(data.get("dataset", ""))),
            ("Partition", _describe_partition(data)),
            ("Model", str((config.get("model") or {}).get("name", ""))),
            ("Rounds", str(config.get("rounds", ""))),
        ]
    facts += [
        ("Engine", str(config.get("engine", ""))),
        ("Seed", str(config.get("seed", record.get("seed", "")))),
        ("Topology", _describe_topology(config.get("system") or {})),
        ("Started", str(record.get("started", "-"))),
        ("fedge", str(versions.get("fedge", "-"))),
    ]
    facts = [(k, v) for k, v in facts if v and v != "None"]
    body = "\n".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts)
    source = record.get("data")
    if isinstance(source, Mapping) and source.get("dir"):
        files = source.get("files") or {}
        lines = "<br>".join(
            f"<code>{_esc(name)}</code> sha256 <code class=hash>{_esc(digest)}</code>"
            for name, digest in files.items()
        )
        body += f"\n<tr><th>Data read from</th><td><code>{_esc(source['dir'])}</code>"
        body += f"<br>{lines}</td></tr>" if lines else "</td></tr>"
    elif isinstance(source, Mapping) and source.get("generated"):
        body += "\n<tr><th>Data</th><td>generated from the seed</td></tr>"
    return f'<h2>The run</h2>\n<div class="scroll"><table class="facts">\n{body}\n</table></div>'


def _warnings_section(warnings: Sequence[str]) -> str:
    if not warnings:
        return ""
    items = "\n".join(f"<li>{_esc(w)}</li>" for w in warnings)
    return f'<h2>Warnings</h2>\n<ul class="warnings">\n{items}\n</ul>'


PLOT_TITLES = {
    "accuracy_vs_round": "Test accuracy by round",
    "accuracy_vs_sim_time": "Test accuracy by simulated time",
    "accuracy_vs_bytes": "Test accuracy by data sent",
    "loss": "Loss by round",
    "bytes_per_tier": "Data sent per tier",
    "energy": "Energy per tier",
    "latency_components": "Transmission latency per component",
    "events": "Handovers, dropouts and stragglers",
    "accuracy_spread": "Accuracy spread across devices (personalized) or edges",
    "confusion": "Confusion matrix",
    "comparison_accuracy_vs_round": "Test accuracy by round (mean and 95% band over seeds)",
    "comparison_accuracy_vs_sim_time": "Test accuracy by simulated time (mean and 95% band)",
    "comparison_accuracy_vs_bytes": "Test accuracy by data sent (mean and 95% band)",
}
"""The caption of each plot file (its stem); any other plot is named after its file."""


def _image_tag(path: Path) -> str:
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = _esc(PLOT_TITLES.get(path.stem, path.stem.replace("_", " ")))
    return (
        f'<figure><img src="data:{mime};base64,{data}" alt="{name}">'
        f"<figcaption>{name}</figcaption></figure>"
    )


def _plots_section(images: Sequence[Path]) -> str:
    tags = []
    for image in images:
        path = Path(image)
        if path.is_file():
            tags.append(_image_tag(path))
        else:
            log.warning("report: image %s not found; left out", path)
    if not tags:
        note = "No plots." if plotting_available() else INSTALL_HINT
        return f'<h2>Plots</h2>\n<p class="note">{_esc(note)}</p>'
    return '<h2>Plots</h2>\n<div class="plots">\n' + "\n".join(tags) + "\n</div>"


def _rounds_section(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return '<h2>Rounds</h2>\n<p class="note">No rounds were logged.</p>'
    columns = row_columns(rows)
    head = "".join(f'<th title="{_esc(c)}">{_esc(label(c))}</th>' for c in columns)
    body = "\n".join(
        "<tr>" + "".join(_cell(c, row.get(c)) for c in columns) + "</tr>" for row in rows
    )
    table = f'<table class="rounds">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>'
    summary = f"<summary>Every round ({len(rows)} rows, {len(columns)} figures)</summary>"
    return (
        f"<h2>Rounds</h2>\n<details>{summary}\n"
        f'<div class="scroll tall">{table}\n</table></div></details>'
    )


def _config_section(config: Mapping[str, Any], written: str) -> str:
    """The config as the user wrote it (``config.toml``), then every key resolved."""
    text = to_toml(_tomlable(config)) if config else ""
    head = "<h2>Config</h2>\n"
    if written:
        head += (
            '<p class="note">As written (file and --set); <code>fedge run '
            f"{WRITTEN_CONFIG}</code> runs it again:</p>\n<pre>{_esc(written)}</pre>\n"
        )
    summary = "Every key, defaults included" if written else "Every key, defaults included:"
    return f"{head}<details><summary>{summary}</summary>\n<pre>{_esc(text)}</pre></details>"


def _tomlable(value: Any) -> Any:
    """What TOML can hold: None left out, tuples as arrays."""
    if isinstance(value, Mapping):
        return {str(k): _tomlable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_tomlable(v) for v in value]
    return value


def _versions_section(
    summary: Mapping[str, Any], config: Mapping[str, Any], record: Mapping[str, Any]
) -> str:
    versions = summary.get("versions") or config.get("versions") or record.get("versions")
    if not isinstance(versions, Mapping) or not versions:
        return ""
    body = "\n".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in versions.items())
    return f'<h2>Versions</h2>\n<table class="versions">\n{body}\n</table>'


def write_report(
    run_dir: Path,
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    images: Sequence[Path],
    title: str = "",
) -> Path:
    """Write ``run_dir/report.html``: what ran (from the config and ``versions.json``: run
    id, algorithm, data and where it was read from, model, engine, seed, topology, date,
    version), its warnings (``warnings.json``), the results with labels and units, the
    plots, every round, the resolved config as TOML and the versions; all text escaped."""
    directory = Path(run_dir)
    heading = title or directory.name or "fedge run"
    record = _optional_json(directory / VERSIONS_FILE)
    warnings = _optional_json(directory / WARNINGS_FILE) or []
    sections = [
        f"<h1>{_esc(heading)}</h1>",
        _what_ran(directory, config, record if isinstance(record, Mapping) else {})
        if config
        else "",
        _warnings_section([str(w) for w in warnings] if isinstance(warnings, list) else []),
        _summary_section(summary),
        _plots_section(images),
        _rounds_section(rows),
        _config_section(config, _optional_text(directory / WRITTEN_CONFIG)),
        _versions_section(summary, config, record if isinstance(record, Mapping) else {}),
    ]
    template = Template(
        resources.files("fedge.results").joinpath("report_template.html").read_text("utf-8")
    )
    page = template.substitute(title=_esc(heading), body="\n".join(s for s in sections if s))
    out = directory / REPORT_NAME
    atomic_write_text(out, page)
    return out


def _optional_text(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def _optional_json(path: Path) -> Any:
    """A run file the report shows when it is there (older runs lack it)."""
    if not path.is_file():
        return {}
    try:
        return read_json(path, "JSON")
    except FedgeError:
        log.warning("report: %s cannot be read; left out", path)
        return {}


def _read_object(path: Path) -> dict[str, Any]:
    expected = _EXPECTED[path.name]
    data = read_json(path, expected)
    if not isinstance(data, dict):
        raise FedgeError(f"{path}: holds a {type(data).__name__}; expected {expected}")
    return data


def _read_confusion(path: Path) -> tuple[np.ndarray | None, list[str] | None]:
    """The optional confusion matrix of a run directory; (None, None) when there is none."""
    if not path.exists():
        return None, None
    data = _read_object(path)
    try:
        matrix = np.asarray(data["matrix"], dtype=float)
    except (KeyError, TypeError, ValueError):
        raise FedgeError(f"{path}: no numeric 'matrix'; expected {_EXPECTED[path.name]}") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise FedgeError(f"{path}: matrix has shape {matrix.shape}; expected a square matrix")
    names = data.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != matrix.shape[0]):
        raise FedgeError(
            f"{path}: class_names must be a list of {matrix.shape[0]} names (one per row)"
        )
    return matrix, None if names is None else [str(n) for n in names]


def rebuild_report(run_dir: Path) -> Path:
    """Regenerate the plots (into ``run_dir/plots``) and ``report.html`` from a run directory's
    summary.json, metrics.csv, config.json and optional confusion.json. Every file is read and
    checked before anything is written, so a bad run directory is left as it was."""
    directory = Path(run_dir)
    if not directory.is_dir():
        raise FedgeError(
            f"{directory}: not a directory; expected a run directory holding "
            "summary.json, metrics.csv and config.json"
        )
    summary = _read_object(directory / "summary.json")
    config = _read_object(directory / "config.json")
    rows = read_rows_csv(directory / "metrics.csv")
    confusion, class_names = _read_confusion(directory / "confusion.json")
    images = plot_run(rows, directory / PLOTS_DIR, confusion, class_names)
    title = str(summary.get("name") or directory.name)
    return write_report(directory, summary, rows, config, images, title=title)

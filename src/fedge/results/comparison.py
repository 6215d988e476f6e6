"""Output of ``fedge compare``: mean curves, ``mean ± ci95`` cells, the table, the report."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from fedge.results.files import atomic_write_text
from fedge.results.formatting import format_table, format_value, label
from fedge.results.recipe import ci95
from fedge.results.report import REPORT_NAME, _esc, _plots_section

COMPARISON_REPORT = "comparison.html"


def format_mean_ci(key: str, mean: float, ci95: float, n: int) -> str:
    """``mean ± ci95`` in the metric's units; just the mean when n < 2 or the CI is unknown."""
    if n < 2 or not math.isfinite(ci95):
        return format_value(key, mean)
    return f"{format_value(key, mean)} ± {format_value(key, ci95)}"


def is_finite_number(value: Any) -> bool:
    """True for an int or float (not a bool) that is neither NaN nor infinite."""
    ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    return ok and math.isfinite(float(value))


CURVE_KEYS = ("accuracy", "sim_time_s", "bytes_up", "bytes_down")


def mean_curve(runs_rows: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Accuracy, simulated time and bytes per evaluated round, averaged over the runs that
    have it, with ``accuracy_ci95`` (the Student-t 95% half-width over those runs, where
    there are two or more) for the comparison's confidence band."""
    by_round: dict[int, list[Mapping[str, Any]]] = {}
    for rows in runs_rows:
        for row in rows:
            if is_finite_number(row.get("accuracy")):
                by_round.setdefault(int(row["round"]), []).append(row)
    curve = []
    for r in sorted(by_round):
        point: dict[str, Any] = {"round": r}
        for key in CURVE_KEYS:
            values = [float(row[key]) for row in by_round[r] if is_finite_number(row.get(key))]
            if values or key in CURVE_KEYS[:2]:  # bytes only where the runs count them
                point[key] = float(np.mean(values)) if values else math.nan
            if key == "accuracy" and len(values) > 1:
                point["accuracy_ci95"] = ci95(values)
        curve.append(point)
    return curve


def _right_aligned(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], right: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows whose text cells in ``right`` columns are padded on the left to one width."""
    out = [dict(row) for row in rows]
    for col in right:
        texts = [format_value(col, row.get(col)) for row in rows]
        width = max([len(col), *(len(t) for t in texts)])
        for row, text in zip(out, texts, strict=True):
            row[col] = text.rjust(width)
    return out


def format_comparison_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], right: Sequence[str] = ()
) -> str:
    """A plain-text table whose ``right`` columns (``mean ± ci95`` texts) are right-aligned."""
    return format_table(_right_aligned(rows, columns, right), columns)


def _table_section(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], right: Sequence[str]
) -> str:
    names = {"n": "Seeds"}  # in a comparison, n counts the runs of a variant
    head = "".join(f'<th title="{_esc(c)}">{_esc(names.get(c, label(c)))}</th>' for c in columns)
    lines = []
    for row in rows:
        cells = "".join(
            f"<td{' class=num' if c in right else ''}>{_esc(format_value(c, row.get(c)))}</td>"
            for c in columns
        )
        lines.append(f"<tr>{cells}</tr>")
    body = "\n".join(lines)
    note = '<p class="note">Mean ± half-width of the Student-t 95% interval over seeds.</p>'
    table = f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    return f"<h2>Variants</h2>\n{note}\n<div class=scroll>{table}</div>"


def _runs_section(directory: Path, runs: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for run in runs:
        run_dir = Path(run["dir"])
        href = os.path.relpath(run_dir / REPORT_NAME, directory)
        lines.append(
            f"<tr><td>{_esc(run['variant'])}</td><td class=num>{_esc(run['seed'])}</td>"
            f'<td><a href="{_esc(Path(href).as_posix())}">{_esc(run["run_id"])}</a></td>'
            f"<td><code>{_esc(run_dir)}</code></td></tr>"
        )
    head = "<tr><th>variant</th><th>seed</th><th>run</th><th>run directory</th></tr>"
    body = "\n".join(lines)
    table = f"<table>\n<thead>{head}</thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    return f'<h2>Runs</h2>\n<div class="scroll">{table}</div>'


def write_comparison_report(
    directory: Path,
    title: str,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    images: Sequence[Path],
    runs: Sequence[Mapping[str, Any]],
    right: Sequence[str] = (),
    about: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write ``directory/comparison.html``: what was compared (``about``: label, text
    pairs), the table, the embedded plots and the runs."""
    facts = "\n".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in about)
    sections = [
        f"<h1>{_esc(title)}</h1>",
        f'<h2>The comparison</h2>\n<div class="scroll"><table class="facts">\n{facts}\n'
        "</table></div>"
        if about
        else "",
        _table_section(rows, columns, right),
        _plots_section(images),
        _runs_section(Path(directory), runs),
    ]
    template = Template(
        resources.files("fedge.results").joinpath("report_template.html").read_text("utf-8")
    )
    page = template.substitute(title=_esc(title), body="\n".join(x for x in sections if x))
    out = Path(directory) / COMPARISON_REPORT
    atomic_write_text(out, page)
    return out

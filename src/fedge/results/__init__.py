"""Results: the SQLite run store, CSV / JSON exports, PNG plots and the HTML report."""

from fedge.results.files import read_json, read_rows_csv, write_json, write_rows_csv
from fedge.results.formatting import format_table, format_value, human_bytes
from fedge.results.plots import plot_comparison, plot_confusion, plot_lines, plot_run
from fedge.results.report import PLOTS_DIR, REPORT_NAME, rebuild_report, write_report
from fedge.results.store import RUN_STATUSES, RunNotFoundError, RunStore

__all__ = [
    "PLOTS_DIR",
    "REPORT_NAME",
    "RUN_STATUSES",
    "RunNotFoundError",
    "RunStore",
    "format_table",
    "format_value",
    "human_bytes",
    "plot_comparison",
    "plot_confusion",
    "plot_lines",
    "plot_run",
    "read_json",
    "read_rows_csv",
    "rebuild_report",
    "write_json",
    "write_report",
    "write_rows_csv",
]

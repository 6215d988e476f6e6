"""HTML report, rebuilding it from a run directory, and terminal tables."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import pytest

from fedge.core.errors import FedgeError
from fedge.results import (
    format_table,
    human_bytes,
    rebuild_report,
    write_json,
    write_report,
    write_rows_csv,
)
from fedge.results import plots as plots_module

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_rows(n: int = 5) -> list[dict[str, float | int]]:
    """Rows like an engine logs: accuracy only in odd (evaluated) rounds."""
    return [
        {
            "round": r,
            "loss": 1.0 / r,
            "sim_time_s": 2.5 * r,
            "energy_j": 10.0 * r,
            "bytes_up_device_edge": 2_000_000 * r,
            "accuracy": 0.5 + 0.05 * r if r % 2 else float("nan"),
        }
        for r in range(1, n + 1)
    ]


SUMMARY = {
    "accuracy": 0.8765,
    "f1": 0.81234567,
    "rounds": 5,
    "bytes_up": 12_500_000,
    "wall_time_s": 3.14159,
    "versions": {"fedge": "0.1.0", "torch": "2.3.0"},
}
CONFIG = {"name": "<script>alert('x')</script>", "algorithm": {"name": "fedavg"}, "seed": 1}


def test_report_holds_summary_rounds_config_versions_and_images(tmp_path: Path) -> None:
    image = tmp_path / "accuracy_vs_round.png"
    image.write_bytes(PNG_SIGNATURE + b"fake image body")
    out = write_report(tmp_path, SUMMARY, make_rows(3), CONFIG, [image], title="Run <1>")
    assert out == tmp_path / "report.html"
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "0.8765" in page and "0.8123" in page and "12.50 MB" in page and "3.14" in page
    assert "bytes_up_device_edge" in page and "4.00 MB" in page  # the per-round table
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "Run &lt;1&gt;" in page
    assert "2.3.0" in page and "torch" in page
    encoded = base64.b64encode(image.read_bytes()).decode()
    assert f'src="data:image/png;base64,{encoded}"' in page


def test_report_renders_without_images_or_rows(tmp_path: Path) -> None:
    page = write_report(tmp_path, {}, [], {}, [tmp_path / "missing.png"]).read_text()
    assert "No rounds were logged" in page and "<img" not in page


def make_run_dir(path: Path) -> Path:
    write_json({**SUMMARY, "name": "quickstart"}, path / "summary.json")
    write_json(CONFIG, path / "config.json")
    write_rows_csv(make_rows(), path / "metrics.csv")
    write_json({"matrix": [[3, 1], [0, 4]], "class_names": ["a", "b"]}, path / "confusion.json")
    return path


def test_rebuild_report_regenerates_plots_and_html(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    run_dir = make_run_dir(tmp_path / "run")
    out = rebuild_report(run_dir)
    page = out.read_text()
    assert "quickstart" in page and "0.8765" in page
    assert page.count("data:image/png;base64,") == 6  # accuracy x2, bytes, energy, confusion, loss
    assert (run_dir / "plots" / "confusion.png").is_file()


def test_rebuild_report_without_matplotlib_still_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(plots_module, "_warned", False)
    page = rebuild_report(make_run_dir(tmp_path)).read_text()
    assert "pip install &#x27;fedge[plots]&#x27;" in page and "<img" not in page


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("summary.json", None, "summary.json: file not found; expected a JSON object"),
        ("summary.json", "[1, 2]", "summary.json: holds a list; expected a JSON object"),
        ("config.json", "{oops", "config.json: cannot read it"),
        ("metrics.csv", None, "metrics.csv: file not found"),
        ("confusion.json", '{"matrix": [[1, 2]]}', "confusion.json: matrix has shape"),
        ("confusion.json", '{"rows": 1}', "confusion.json: no numeric 'matrix'"),
    ],
)
def test_rebuild_report_bad_files_give_clear_errors_and_keep_files(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    run_dir = make_run_dir(tmp_path)
    (run_dir / "report.html").write_text("old report")
    if content is None:
        (run_dir / name).unlink()
    else:
        (run_dir / name).write_text(content)
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(FedgeError, match=re.escape(message)):
        rebuild_report(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert (run_dir / "report.html").read_text() == "old report"


def test_rebuild_report_on_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FedgeError, match="not a directory"):
        rebuild_report(tmp_path / "nope")


def test_format_table_aligns_and_formats_numbers() -> None:
    rows = [
        {"round": 1, "accuracy": 0.5, "bytes_up": 1_500_000, "sim_time_s": 2.0, "algo": "fedavg"},
        {"round": 10, "accuracy": 0.91234, "bytes_up": 2_000_000_000, "algo": "hier"},
    ]
    text = format_table(rows, ["round", "accuracy", "bytes_up", "sim_time_s", "algo"])
    lines = text.splitlines()
    assert lines[0].split() == ["round", "accuracy", "bytes_up", "sim_time_s", "algo"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["1", "0.5000", "1.50", "MB", "2.00", "fedavg"]
    assert lines[3].split() == ["10", "0.9123", "2.00", "GB", "-", "hier"]
    # numbers are right-aligned: each numeric column ends at the same character position
    for column in ("round", "accuracy", "bytes_up", "sim_time_s"):
        end = lines[0].index(column) + len(column)
        assert all(line[end - 1] != " " for line in lines[2:])
    assert lines[2].index("fedavg") == lines[3].index("hier") == lines[0].index("algo")


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(999) == "999 B"
    assert human_bytes(1_500) == "1.50 KB"
    assert human_bytes(12_500_000) == "12.50 MB"
    assert human_bytes(3e9) == "3.00 GB"
    assert human_bytes(-2_000_000) == "-2.00 MB"
    assert human_bytes(float("nan")) == "-"
    assert json.dumps(human_bytes(1)) == '"1 B"'

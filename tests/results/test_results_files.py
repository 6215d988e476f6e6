"""CSV and JSON exports: round-trips, atomic writes, NaN handling."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedge.core.errors import FedgeError
from fedge.results import read_json, read_rows_csv, write_json, write_rows_csv


def test_csv_round_trip_keeps_numbers_and_column_order(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"loss": 2.5, "round": 1, "participants": 4, "bytes_up_device_edge": 123456789},
        {
            "round": 2,
            "loss": 0.1 + 0.2,
            "accuracy": 0.75,
            "note": "eval",
            "energy_j": np.float64(3),
        },
        {"round": 3, "loss": float("nan"), "accuracy": 1.0},
    ]
    path = tmp_path / "out" / "metrics.csv"
    write_rows_csv(rows, path)
    header = path.read_text().splitlines()[0]
    assert header == "round,loss,participants,bytes_up_device_edge,accuracy,note,energy_j"
    back = read_rows_csv(path)
    assert back[0] == {
        "round": 1,
        "loss": 2.5,
        "participants": 4,
        "bytes_up_device_edge": 123456789,
    }
    assert isinstance(back[0]["round"], int) and isinstance(back[0]["loss"], float)
    assert back[1]["loss"] == 0.1 + 0.2  # full float precision survives
    assert back[1]["note"] == "eval" and back[1]["energy_j"] == 3.0
    assert "participants" not in back[1]  # a missing value stays missing
    assert math.isnan(back[2]["loss"])
    write_rows_csv(rows, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_text() == path.read_text()  # stable


def test_read_rows_csv_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FedgeError, match=r"metrics\.csv: file not found"):
        read_rows_csv(tmp_path / "metrics.csv")
    bad = tmp_path / "ragged.csv"
    bad.write_text("round,accuracy\n1,0.5,extra\n")
    with pytest.raises(FedgeError, match=r"ragged\.csv: line 2"):
        read_rows_csv(bad)


def test_write_json_converts_numpy_and_writes_nan_as_null(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "summary.json"
    obj = {
        "accuracy": np.float32(0.5),
        "rounds": np.int64(3),
        "loss": float("nan"),
        "curve": np.array([1.0, np.inf]),
        "dir": tmp_path,
    }
    write_json(obj, path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "accuracy": 0.5, "rounds": 3, "loss": None, "curve": [1.0, None], "dir": str(tmp_path),
    }  # fmt: skip
    assert read_json(path) == json.loads(text)


def test_write_json_is_atomic_and_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json({"accuracy": 0.9}, path)
    with pytest.raises(FedgeError, match=r"\$\.bad.*object"):
        write_json({"accuracy": 0.1, "bad": object()}, path)
    assert json.loads(path.read_text()) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left


def test_read_json_errors_name_the_file_and_the_expectation(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text("{not json")
    with pytest.raises(FedgeError, match=r"summary\.json.*expected a summary"):
        read_json(path, "a summary")

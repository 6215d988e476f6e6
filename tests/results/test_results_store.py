"""The SQLite run store: round-trips, resume semantics, errors, sharing one file."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedge.core.errors import ConfigError, FedgeError
from fedge.results import RunNotFoundError, RunStore

CONFIG = {"algorithm": {"name": "fedavg", "lr": 0.05}, "rounds": 3, "tags": ["a", "b"]}
VERSIONS = {"fedge": "0.1.0", "torch": "2.3.0"}


def _new_run(store: RunStore, name: str = "quickstart") -> str:
    return store.create_run(name, CONFIG, seed=7, versions=VERSIONS, run_dir="runs/x")


def test_round_trip_of_config_seed_versions_rows_and_summary(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "runs" / "fedge.sqlite"
    with RunStore(path) as store:
        run_id = _new_run(store)
        store.log_round(run_id, 1, {"accuracy": 0.5, "loss": 1.2, "bytes_up_device_edge": 1000})
        store.log_round(run_id, 0, {"loss": 2.0, "accuracy": float("nan"), "note": "warmup"})
        store.finish(run_id, {"accuracy": 0.5, "rounds": 2, "energy_j": np.float32(1.5)})
        run = store.get_run(run_id)
        rows = store.rounds(run_id)
    assert path.is_file()
    assert "quickstart" in run_id
    assert run["id"] == run_id and run["name"] == "quickstart"
    assert run["config"] == CONFIG and run["seed"] == 7 and run["versions"] == VERSIONS
    assert run["run_dir"] == "runs/x" and run["status"] == "finished" and run["created"]
    assert run["summary"] == {"accuracy": 0.5, "rounds": 2, "energy_j": 1.5}
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[0]["note"] == "warmup" and math.isnan(rows[0]["accuracy"])
    assert rows[1] == {"round": 1, "accuracy": 0.5, "loss": 1.2, "bytes_up_device_edge": 1000}
    assert isinstance(rows[1]["bytes_up_device_edge"], int)


def test_schema_has_version_wal_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "fedge.sqlite"
    RunStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_relogging_a_round_replaces_it(tmp_path: Path) -> None:
    with RunStore(tmp_path / "s.sqlite") as store:
        run_id = _new_run(store)
        store.log_round(run_id, 1, {"accuracy": 0.1, "stale": 1})
        store.log_round(run_id, 2, {"accuracy": 0.2})
        store.log_round(run_id, 1, {"accuracy": 0.9})
        assert store.rounds(run_id) == [
            {"round": 1, "accuracy": 0.9},
            {"round": 2, "accuracy": 0.2},
        ]


def test_unknown_run_id_names_it_and_lists_recent_ids(tmp_path: Path) -> None:
    with RunStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(RunNotFoundError, match="holds no runs"):
            store.get_run("nope")
        known = _new_run(store)
        for call in (
            lambda: store.get_run("missing-run"),
            lambda: store.rounds("missing-run"),
            lambda: store.log_round("missing-run", 1, {"accuracy": 1.0}),
            lambda: store.finish("missing-run", {}),
        ):
            with pytest.raises(FedgeError, match="missing-run") as info:
                call()
            assert known in str(info.value)
            assert isinstance(info.value, KeyError)


def test_bad_status_and_bad_metric_values_fail_early(tmp_path: Path) -> None:
    with RunStore(tmp_path / "s.sqlite") as store:
        run_id = _new_run(store)
        with pytest.raises(ConfigError, match="status"):
            store.finish(run_id, {}, status="done")
        with pytest.raises(ConfigError, match="weights"):
            store.log_round(run_id, 1, {"weights": [1, 2]})  # type: ignore[dict-item]
        store.log_round(run_id, 1, {"participants": np.int64(4)})  # type: ignore[dict-item]
        assert store.rounds(run_id) == [{"round": 1, "participants": 4}]
        store.finish(run_id, {}, status="interrupted")
        assert store.get_run(run_id)["status"] == "interrupted"


def test_two_store_objects_on_one_file_see_each_others_runs(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    with RunStore(path) as first, RunStore(path) as second:
        a = _new_run(first, "alpha")
        b = _new_run(second, "beta")
        assert a != b
        first.log_round(b, 1, {"accuracy": 0.3})
        assert second.rounds(b) == [{"round": 1, "accuracy": 0.3}]
        assert second.get_run(a)["name"] == "alpha"
        ids = [r["id"] for r in first.list_runs()]
        assert set(ids) == {a, b} and ids[0] == b  # most recent first
        assert len(first.list_runs(limit=1)) == 1


def test_run_ids_are_unique_and_safe(tmp_path: Path) -> None:
    with RunStore(tmp_path / "s.sqlite") as store:
        ids = {_new_run(store, "my run/../x") for _ in range(20)}
    assert len(ids) == 20
    assert all("/" not in i and " " not in i for i in ids)


def test_a_file_that_is_not_sqlite_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.sqlite"
    path.write_text("this is not a database " * 100)
    with pytest.raises(FedgeError, match=r"bad\.sqlite"):
        RunStore(path)

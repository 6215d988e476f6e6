"""The run store: one SQLite file (e.g. ``runs/fedge.sqlite``) shared by many runs.

Each run keeps its resolved config, seed, library versions, status, summary and one row of
metrics per round. Rows are stored as JSON so any metric name can appear. The file uses WAL
mode, so several processes (or several ``RunStore`` objects) can read and write it at once.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from fedge.core.errors import ConfigError, FedgeError
from fedge.results.files import read_rows_csv, to_jsonable, write_json, write_rows_csv

__all__ = [
    "RUN_STATUSES", "RunNotFoundError", "RunStore", "read_rows_csv", "write_json", "write_rows_csv",
]  # fmt: skip

SCHEMA_VERSION = 1
RUN_STATUSES = ("running", "finished", "failed", "interrupted")
_FINAL_STATUSES = RUN_STATUSES[1:]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created TEXT NOT NULL,
    config TEXT NOT NULL,
    seed INTEGER NOT NULL,
    versions TEXT NOT NULL,
    status TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '{}',
    run_dir TEXT NOT NULL,
    finished TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    round INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
"""

_RUN_COLUMNS = "id, name, created, config, seed, versions, status, summary, run_dir, finished"


class RunNotFoundError(FedgeError, KeyError):
    """A run id that the store does not hold; the message lists the most recent ids."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RunStore:
    """SQLite store of runs and their per-round metrics. Use as a context manager or close()."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        except sqlite3.Error as exc:
            raise FedgeError(f"{self.path}: cannot open the run store ({exc})") from None
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._init_schema()

    def _init_schema(self) -> None:
        conn = self._conn
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            with conn:
                conn.executescript(_SCHEMA)
                row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
                if row[0] is None:
                    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise FedgeError(
                f"{self.path}: not a usable fedge run store ({exc}); expected an SQLite file"
            ) from None
        if row[0] is not None and row[0] > SCHEMA_VERSION:
            conn.close()
            raise FedgeError(
                f"{self.path}: run store schema version {row[0]} is newer than this fedge "
                f"supports ({SCHEMA_VERSION}); upgrade fedge"
            )

    def create_run(
        self,
        name: str,
        config: Mapping[str, Any],
        seed: int,
        versions: Mapping[str, str],
        run_dir: str,
    ) -> str:
        """Record a new run (status ``running``) and return its unique id."""
        values = (name, _now(), _dumps(config), int(seed), _dumps(versions), str(run_dir))
        for _ in range(10):
            run_id = _new_run_id(name)
            try:
                self._write(
                    "INSERT INTO runs (id, name, created, config, seed, versions, run_dir,"
                    " status) VALUES (?, ?, ?, ?, ?, ?, ?, 'running')",
                    (run_id, *values),
                )
                return run_id
            except sqlite3.IntegrityError:
                continue
        raise FedgeError(f"{self.path}: could not find a free run id for {name!r}")

    def set_run_dir(self, run_id: str, run_dir: str) -> None:
        """Record where the run's files live (known once the id is)."""
        self._require(run_id)
        self._write("UPDATE runs SET run_dir = ? WHERE id = ?", (str(run_dir), run_id))

    def log_round(
        self, run_id: str, round_index: int, metrics: Mapping[str, float | int | str]
    ) -> None:
        """Store one round's metrics; logging the same round again replaces it (resume)."""
        self._require(run_id)
        row = {"round": int(round_index), **{k: v for k, v in metrics.items() if k != "round"}}
        self._write(
            "INSERT OR REPLACE INTO rounds (run_id, round, metrics) VALUES (?, ?, ?)",
            (run_id, int(round_index), _row_json(row)),
        )

    def finish(self, run_id: str, summary: Mapping[str, Any], status: str = "finished") -> None:
        """Mark a run finished, failed or interrupted and store its summary."""
        if status not in _FINAL_STATUSES:
            raise ConfigError("status", status, "one of " + ", ".join(_FINAL_STATUSES))
        self._require(run_id)
        self._write(
            "UPDATE runs SET status = ?, summary = ?, finished = ? WHERE id = ?",
            (status, _dumps(summary), _now(), run_id),
        )

    def delete_run(self, run_id: str) -> None:
        """Forget a run and its rounds (a run that failed before its first round)."""
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM rounds WHERE run_id = ?", (run_id,))
            self._conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def reopen(self, run_id: str, kept_rounds: int) -> None:
        """Mark a run ``running`` again to resume it after round ``kept_rounds``: the rows of
        later rounds (logged after its last checkpoint) and its summary are dropped."""
        self._require(run_id)
        with self._lock, self._conn:
            self._conn.execute(
                "DELETE FROM rounds WHERE run_id = ? AND round > ?", (run_id, int(kept_rounds))
            )
            self._conn.execute(
                "UPDATE runs SET status = 'running', summary = '{}', finished = NULL WHERE id = ?",
                (run_id,),
            )

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run's record: id, name, created, config, seed, versions, status, summary,
        run_dir and finished (None while running)."""
        row = self._conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise self._not_found(run_id)
        return _run_record(row)

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        """The run's per-round rows, ordered by round."""
        self._require(run_id)
        cursor = self._conn.execute(
            "SELECT metrics FROM rounds WHERE run_id = ? ORDER BY round", (run_id,)
        )
        return [json.loads(r["metrics"]) for r in cursor]

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        """The most recent runs first (at most ``limit``), each as in :meth:`get_run`."""
        cursor = self._conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY created DESC, rowid DESC LIMIT ?",
            (int(limit),),
        )
        return [_run_record(r) for r in cursor]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        """Run one statement in its own transaction."""
        with self._lock, self._conn:
            self._conn.execute(sql, params)

    def _require(self, run_id: str) -> None:
        found = self._conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone()
        if found is None:
            raise self._not_found(run_id)

    def _not_found(self, run_id: str) -> RunNotFoundError:
        recent = [r["id"] for r in self.list_runs(limit=5)]
        known = "recent runs: " + ", ".join(recent) if recent else "the store holds no runs"
        return RunNotFoundError(f"unknown run id {run_id!r} in {self.path}; {known}")


def _new_run_id(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{uuid.uuid4().hex[:4]}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _dumps(obj: Any) -> str:
    """JSON text for a config / versions / summary column (NaN becomes null)."""
    return json.dumps(to_jsonable(obj), allow_nan=False)


def _row_json(row: Mapping[str, Any]) -> str:
    """JSON text of a metrics row; NaN is kept (Python's JSON reads it back)."""
    clean: dict[str, float | int | str | None] = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if value is not None and not isinstance(value, int | float | str):
            raise ConfigError(f"metrics[{key!r}]", value, "a number or a string")
        clean[str(key)] = value
    return json.dumps(clean)


def _run_record(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    for key in ("config", "versions", "summary"):
        record[key] = json.loads(record[key])
    return record

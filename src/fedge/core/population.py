"""``[population]``: device state kept within a memory budget, the rest on disk.

A large population's device apps are made on demand (:class:`fedge.core.node.LazyApps`).
Each app's *state* (``NodeApp.state``: an error-feedback residual, a FedPer head, a Ditto
personal model, a decentralized device's model, privacy counters) is what a run cannot
rebuild from its config; the rest of an app (its data view, the shared model, its handler
closures) is rebuilt by the app's maker. With ``state_memory_mb`` set, the resident state
is measured (:func:`node_state_nbytes`) and, beyond the budget, the least recently used device's
state is written to a :class:`StateStore` and its app dropped; the next message to that
device rebuilds the app and puts its state back, value for value.

The store is one SQLite file in the run directory (``device_state.sqlite``): one row per
written state, never overwritten in place. A checkpoint records which row holds each
device's state; rows that no checkpoint can reach any more are deleted only after the next
checkpoint is on disk, and a resume deletes every row its checkpoint does not name (rows a
crashed process wrote after it). So the state a resume reads is the state of the
checkpoint's round, without copying the store at every checkpoint.
"""

from __future__ import annotations

import dataclasses
import pickle
import shutil
import sqlite3
import sys
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from fedge.core.errors import FedgeError
from fedge.core.settings import Section

STATE_FILE = "device_state.sqlite"
MIB = 1 << 20


class PopulationSettings(Section):
    """How much device state a process keeps in memory (the local and Ray engines)."""

    section: ClassVar[str] = "population"

    state_memory_mb: float | None = Field(
        None,
        gt=0,
        description="MiB of device state kept in memory; beyond it the least recently used "
        "devices' state goes to the run directory (device_state.sqlite); None: unlimited",
    )

    def budget_bytes(self) -> int | None:
        """The budget in bytes (None: unlimited)."""
        return None if self.state_memory_mb is None else int(self.state_memory_mb * MIB)


def node_state_nbytes(state: object) -> int:
    """The memory a node state holds: the bytes of every distinct tensor storage and numpy
    buffer in it, plus ``sys.getsizeof`` of every other object reached (containers,
    dataclasses and objects with a ``__dict__`` are walked; each object counted once)."""
    seen: set[int] = set()
    storages: set[tuple[int, int]] = set()
    total = 0
    stack: list[object] = [state]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            where = (storage.data_ptr(), storage.nbytes())
            if where not in storages:
                storages.add(where)
                total += storage.nbytes()
            continue
        if isinstance(obj, np.ndarray):
            total += obj.nbytes if obj.base is None else 0
            if obj.base is not None:
                stack.append(obj.base)
            continue
        total += sys.getsizeof(obj)
        stack.extend(_children(obj))
    return total


def _children(obj: object) -> Iterable[object]:
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, list | tuple | set | frozenset):
        return list(obj)
    if isinstance(obj, str | bytes | int | float | bool | type) or obj is None:
        return ()
    if dataclasses.is_dataclass(obj):
        return [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    if hasattr(obj, "__dict__"):
        return list(vars(obj).values())
    return ()


class StateStore:
    """Device states on disk: a SQLite table of pickled states (tensors by value, exactly).

    Built with the experiment and named by reference in checkpoints; ``bind`` points it at
    the run directory before the first write (unbound, it writes to a temporary directory
    removed with the store). Writes become durable at ``commit`` (a checkpoint commits).
    """

    checkpoint_by_reference = True

    def __init__(self) -> None:
        self._path: Path | None = None
        self._db: sqlite3.Connection | None = None
        self._finalizer: weakref.finalize[Any, StateStore] | None = None
        self._bound = False

    def __getstate__(self) -> dict[str, Any]:
        """A copy reopens the same file (a temporary one is not shared)."""
        return {"_path": self._path if self._bound else None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self._path = state["_path"]
        self._bound = self._path is not None

    @property
    def path(self) -> Path | None:
        """The SQLite file (None until bound or first written)."""
        return self._path

    def bind(self, directory: Path) -> None:
        """Keep the states in ``directory/device_state.sqlite`` (before anything is written)."""
        if self._db is not None:
            raise FedgeError(f"the device state store is already open at {self._path}")
        self._path = Path(directory) / STATE_FILE
        self._bound = True

    def put(self, node_id: str, state: dict[str, Any]) -> int:
        """Write ``state``; returns the row that holds it."""
        try:
            blob = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise FedgeError(
                f"cannot write the state of {node_id} to disk ({exc}); allowed: state that "
                "pickles, or no [population] state_memory_mb for this algorithm"
            ) from exc
        cur = self._conn().execute(
            "INSERT INTO state (node, data) VALUES (?, ?)", (node_id, sqlite3.Binary(blob))
        )
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def get(self, key: int) -> dict[str, Any]:
        """The state written as row ``key``."""
        row = self._conn().execute("SELECT data FROM state WHERE id = ?", (key,)).fetchone()
        if row is None:
            raise FedgeError(f"{self._path}: no device state {key} (the store does not match)")
        state: dict[str, Any] = pickle.loads(row[0])
        return state

    def discard(self, keys: Iterable[int]) -> None:
        """Delete rows nothing refers to any more."""
        rows = [(k,) for k in keys]
        if rows:
            self._conn().executemany("DELETE FROM state WHERE id = ?", rows)

    def keep_only(self, keys: Iterable[int]) -> None:
        """Delete every row but ``keys`` (what a checkpoint refers to), and commit."""
        if self._db is None and (self._path is None or not self._path.exists()):
            return
        db = self._conn()
        keep = set(keys)
        stale = [(k,) for (k,) in db.execute("SELECT id FROM state") if k not in keep]
        db.executemany("DELETE FROM state WHERE id = ?", stale)
        db.commit()

    def commit(self) -> None:
        """Make the writes so far durable (before a checkpoint that refers to them)."""
        if self._db is not None:
            self._db.commit()

    def close(self) -> None:
        """Drop what was written since the last ``commit`` and close the file, as a crash
        would (the last checkpoint refers only to committed rows); a later use reopens it.
        An unbound (temporary) store stays open: nothing else refers to its rows."""
        if self._db is not None and self._bound:
            self._db.rollback()
            self._db.close()
            self._db = None
            if self._finalizer is not None:
                self._finalizer.detach()

    def nbytes(self) -> int:
        """Bytes of the states in the store."""
        if self._db is None:
            return 0
        row = self._conn().execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM state")
        return int(row.fetchone()[0])

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            if self._path is None:
                tmp = Path(tempfile.mkdtemp(prefix="fedge-state-"))
                self._path = tmp / STATE_FILE
            else:
                tmp = None
            db = sqlite3.connect(self._path, check_same_thread=False)
            db.execute(
                "CREATE TABLE IF NOT EXISTS state "
                "(id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, data BLOB NOT NULL)"
            )
            db.commit()
            self._db = db
            self._finalizer = weakref.finalize(self, _close, db, tmp)
        return self._db


def _close(db: sqlite3.Connection, tmp: Path | None) -> None:
    db.close()
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)

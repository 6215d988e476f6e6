"""Checkpoints of the local engine: what a run directory must hold to be resumed, what a
checkpoint of an Experiment contains, and the lock that keeps two processes out of one run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from fedge.algorithms.base import RoundRecord
from fedge.core.errors import FedgeError
from fedge.core.files import atomic_write_bytes
from fedge.core.node import LazyApps
from fedge.experiment.build import Experiment
from fedge.experiment.config import ExperimentConfig, parse_config
from fedge.experiment.engines import ENGINES
from fedge.experiment.systems import sumo_scenario
from fedge.results import RunNotFoundError, RunStore, read_json
from fedge.results.files import to_jsonable
from fedge.runs.checkpoint import (
    CHECKPOINT_NAME,
    TMP_SUFFIX,
    Checkpoint,
    CheckpointError,
    References,
    load_checkpoint,
    read_checkpoint_header,
    save_checkpoint,
)

"""A gRPC run resumes in its cloud process (``fedge serve cloud --resume``)."""
LOCK_NAME = "run.lock"
_ALLOWED = (
    "a run directory written by `fedge run` that holds config.json and checkpoint.pkl "
    "and whose run did not finish"
)


def references(exp: Experiment) -> References:
    """Scan a fresh build: the live objects a checkpoint stores, then static roots."""
    live = (exp.coordinator, exp.transport, exp.nodes, exp.rng)
    return References.scan(*live, exp.model, exp.train, exp.test, exp.system, exp.config)


def checkpoint_meta(config: ExperimentConfig, run_id: str) -> dict[str, Any]:
    """Header fields a resume must match: the run, its config, the library versions."""
    import numpy
    import torch

    import fedge

    text = json.dumps(to_jsonable(config.model_dump()), sort_keys=True)
    libraries = {"fedge": fedge.__version__, "torch": torch.__version__, "numpy": numpy.__version__}
    config_sha256 = hashlib.sha256(text.encode()).hexdigest()
    return {"run_id": run_id, "config_sha256": config_sha256, "versions": libraries}


def checkpointer(
    exp: Experiment, run_dir: Path, refs: References, run_id: str
) -> Callable[[RoundRecord, dict[str, Any]], None]:
    """Saves the live objects of ``exp`` after a round, with what the driver adds. An object
    that cannot be stored (e.g. a custom algorithm's) warns once and stops the checkpoints:
    the run goes on, and can be resumed from the last checkpoint written, if any."""
    meta = checkpoint_meta(exp.config, run_id)
    failed: list[CheckpointError] = []

    def save(record: RoundRecord, extra: dict[str, Any]) -> None:
        if failed:
            return
        ckpt = Checkpoint(
            record.round, record.state, exp.coordinator, exp.rng, exp.transport, exp.nodes, extra
        )
        try:
            save_checkpoint(run_dir / CHECKPOINT_NAME, ckpt, refs, meta)
            apps = getattr(exp.nodes, "apps", None)
            if isinstance(apps, LazyApps):
                apps.checkpointed()  # rows only the previous checkpoint referred to go
        except CheckpointError as exc:
            failed.append(exc)
            warnings.warn(
                f"{exc}; no further checkpoints in this run", RuntimeWarning, stacklevel=2
            )

    return save


def restore(
    exp: Experiment, run_dir: Path, refs: References, meta: dict[str, Any]
) -> tuple[Experiment, Checkpoint]:
    """The freshly built ``exp`` with the live objects of the run's checkpoint (call it with
    the run's lock held: it also removes checkpoints left half-written by a dead process)."""
    for stale in run_dir.glob(f".{CHECKPOINT_NAME}.*{TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
    ckpt, _ = load_checkpoint(run_dir / CHECKPOINT_NAME, refs, meta)
    if ckpt.transport is None or ckpt.nodes is None:
        raise CheckpointError(f"{run_dir / CHECKPOINT_NAME}: no transport or node apps in it")
    live = dataclasses.replace(
        exp, coordinator=ckpt.coordinator, transport=ckpt.transport, nodes=ckpt.nodes, rng=ckpt.rng
    )
    attach_state(live, run_dir)
    return live, ckpt


FCD_NAME = "sumo-fcd.xml"
"""The FCD file a run with ``system.mobility = "sumo"`` replays, kept in its directory."""


def _sumo_cache(config: ExperimentConfig) -> Path | None:
    if config.system.mobility != "sumo":
        return None
    scenario = sumo_scenario(config.system, config.seed)
    return Path(config.system.sumo.cache_dir) / f"fcd-{scenario.key()}.xml"


def keep_fcd(config: ExperimentConfig, run_dir: Path) -> None:
    """SUMO mobility: copy the run's FCD file into its directory, so that the run replays
    from there without SUMO (and without the cache, which is relative to the cwd)."""
    cached = _sumo_cache(config)
    if cached is not None and cached.is_file():
        atomic_write_bytes(run_dir / FCD_NAME, cached.read_bytes())


def replay_fcd(config: ExperimentConfig, run_dir: Path) -> None:
    """Before a resume builds the run again: the FCD file the run kept goes back into the
    cache (when absent there), so the build replays it instead of running SUMO."""
    cached, kept = _sumo_cache(config), run_dir / FCD_NAME
    if cached is not None and kept.is_file() and not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cached, kept.read_bytes())


def attach_state(exp: Experiment, run_dir: Path) -> None:
    """Device state beyond ``[population] state_memory_mb`` goes to ``run_dir``; rows there
    that the loaded checkpoint does not refer to (a crashed process's) are deleted."""
    apps = getattr(exp.nodes, "apps", None)
    if isinstance(apps, LazyApps):
        apps.attach(run_dir)


@dataclass(frozen=True)
class ResumePoint:
    """A run directory checked for resuming: its config, run id and checkpoint header."""

    run_dir: Path
    config: ExperimentConfig
    run_id: str
    header: dict[str, Any]


def resume_point(run_dir: str | Path) -> ResumePoint:
    """Check a run directory before anything is built (FedgeError names what is missing)."""
    d = Path(run_dir)
    if not d.is_dir():
        raise FedgeError(f"--resume {d}: no such directory; allowed: {_ALLOWED}")
    config = parse_config(read_json(d / "config.json", f"the run's config; allowed: {_ALLOWED}"))
    if config.study is not None:
        raise FedgeError(
            f"{d}: a run of study {config.study!r} is not resumed (a study writes no "
            "checkpoints; its rows are cheap to recompute); allowed: run it again with "
            "`fedge run CONFIG`"
        )
    resumable = [name for name in ENGINES.names() if ENGINES.get(name).resumable]
    if config.engine not in resumable:
        raise FedgeError(
            f"{d}: a run of engine {config.engine!r} cannot be resumed; allowed: engine "
            + " | ".join(repr(e) for e in resumable)
        )
    if not (d / CHECKPOINT_NAME).is_file():
        raise CheckpointError(
            f"{d}: no {CHECKPOINT_NAME} (the run stopped before its first round ended); "
            f"allowed: {_ALLOWED}; start it again with `fedge run CONFIG`"
        )
    header = read_checkpoint_header(d / CHECKPOINT_NAME)
    run_id = header.get("run_id")
    if not isinstance(run_id, str):
        raise CheckpointError(f"{d / CHECKPOINT_NAME}: the header names no run id")
    return ResumePoint(d, config, run_id, header)


def check_unfinished(store: RunStore, point: ResumePoint) -> None:
    """The run must be in the config's store and not finished."""
    try:
        run = store.get_run(point.run_id)
    except RunNotFoundError:
        raise FedgeError(
            f"{point.run_dir}: run {point.run_id} is not in the run store {store.path} "
            "(output.store of its config, relative to the directory fedge runs in); allowed: "
            "resume from the directory the run was started in"
        ) from None
    if run["status"] == "finished":
        raise FedgeError(
            f"{point.run_dir}: run {point.run_id} already finished (see its summary.json); "
            f"allowed: {_ALLOWED}"
        )


class RunLock:
    """An exclusive lock on ``RUN_DIR/run.lock`` while a process works in the run: a second
    process (a resume of a run that is still going) gets a clear error. The kernel releases
    it when the holder dies, kill -9 included. No lock on Windows."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._fh: IO[str] | None = None

    def __enter__(self) -> RunLock:
        fh = open(self.path, "a+")  # held until __exit__
        if not _try_lock(fh.fileno()):
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise FedgeError(
                f"{self.path.parent}: another fedge process (pid {holder}) is running this "
                "run; allowed: a run that no process is running (wait for it or stop it)"
            )
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True

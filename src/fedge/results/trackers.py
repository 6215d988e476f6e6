"""The experiment trackers people already use: TensorBoard event files and MLflow runs, fed
with the same per-round metrics, parameters and files as the run store.

Both are optional extras (``tensorboard``, ``mlflow``); asking for one that is not installed
is a one-line error with the install hint, raised before any work. ``open_trackers`` gives
the trackers a config asks for; each gets ``log_round`` per round (or study step) and
``finish`` once, with the run's status, summary and directory.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedge.core.errors import FedgeError

TENSORBOARD_DIR = "tensorboard"
"""TensorBoard event files go to ``<run dir>/tensorboard`` (``tensorboard --logdir runs``)."""
ARTIFACTS = ("config.json", "versions.json", "summary.json", "metrics.csv", "report.html")
"""Files of the run directory that MLflow keeps as artefacts (when they exist)."""
_MAX_PARAM = 500  # MLflow refuses longer parameter values


class Tracker(Protocol):
    """Something that follows a run round by round."""

    def log_round(self, step: int, row: Mapping[str, Any]) -> None: ...

    def finish(self, status: str, summary: Mapping[str, Any], run_dir: Path) -> None: ...


def numeric(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a row (what a tracker can plot), without the step keys."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in ("round", "step") or isinstance(value, bool):
            continue
        if isinstance(value, int | float | np.number) and math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys -> text (the parameters a tracker records)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:_MAX_PARAM]
    return out


def _tag(key: str) -> str:
    """Group related figures in TensorBoard: ``bytes_up_device_edge`` -> ``bytes/up_...``."""
    for group in ("bytes", "energy_j", "latency", "round", "accuracy", "global"):
        if key.startswith(group + "_"):
            return f"{group}/{key.removeprefix(group + '_')}"
    return key


class TensorBoardTracker:
    """Scalars per round under ``<run dir>/tensorboard``, the config as text."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FedgeError(
                "output.tensorboard: the tensorboard package is not installed; "
                "pip install 'fedge[tensorboard]'"
            ) from None
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self._writer = SummaryWriter(log_dir=str(self.log_dir))
        lines = "\n".join(f"    {k} = {v}" for k, v in flatten(config).items())
        self._writer.add_text("config", lines, 0)

    def log_round(self, step: int, row: Mapping[str, Any]) -> None:
        for key, value in numeric(row).items():
            self._writer.add_scalar(_tag(key), value, step)
        self._writer.flush()

    def finish(self, status: str, summary: Mapping[str, Any], run_dir: Path) -> None:
        self._writer.add_text("status", status, 0)
        self._writer.close()


def _mlflow_uri(uri: str) -> str:
    """A plain folder (e.g. ``mlruns``) becomes a ``file:`` URI, and MLflow's file store,
    which it keeps in maintenance mode, is allowed for it (no server, no database)."""
    local = "://" not in uri and not uri.startswith("file:")
    tracking = Path(uri).resolve().as_uri() if local else uri
    if tracking.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return tracking


class MlflowTracker:
    """One MLflow run per fedge run: the flattened config as parameters, the fedge run id
    as a tag, each round's numbers as metrics at step = round, the run's files as
    artefacts, and its status when it ends."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        config: Mapping[str, Any],
        tags: Mapping[str, str],
    ) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise FedgeError(
                "output.mlflow_uri: the mlflow package is not installed; "
                "pip install 'fedge[mlflow]'"
            ) from None
        self.uri = _mlflow_uri(uri)
        try:
            self._client = MlflowClient(tracking_uri=self.uri)
            found = self._client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id if found else self._client.create_experiment(experiment)
            )
            run = self._client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        except Exception as exc:  # the tracking server or store refused: say where
            raise FedgeError(f"output.mlflow_uri: cannot log to {uri!r}: {exc}") from None
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 per batch
            self._client.log_batch(self.run_id, params=params[start : start + 100])

    def log_round(self, step: int, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        metrics = [Metric(k, v, now_ms, step) for k, v in numeric(row).items()]
        for start in range(0, len(metrics), 1000):
            self._client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def finish(self, status: str, summary: Mapping[str, Any], run_dir: Path) -> None:
        for name in ARTIFACTS:
            if (Path(run_dir) / name).is_file():
                self._client.log_artifact(self.run_id, str(Path(run_dir) / name))
        mlflow_status = {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self._client.set_terminated(self.run_id, mlflow_status)


class Trackers:
    """The trackers of one run, fed together; a tracker that fails mid-run is reported by
    the caller's error, never silently dropped."""

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)

    def log_round(self, step: int, row: Mapping[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_round(step, row)

    def finish(self, status: str, summary: Mapping[str, Any], run_dir: Path) -> None:
        for tracker in self.trackers:
            tracker.finish(status, summary, run_dir)
        self.trackers = []


def open_trackers(
    output: Any, config: Mapping[str, Any], name: str, run_id: str, run_dir: Path
) -> Trackers:
    """The trackers ``output`` (the ``[output]`` section) asks for, opened for this run."""
    trackers: list[Tracker] = []
    if output.tensorboard:
        trackers.append(TensorBoardTracker(run_dir, config))
    if output.mlflow_uri:
        experiment = output.mlflow_experiment or name
        tags = {"fedge.run_id": run_id, "fedge.run_dir": str(run_dir)}
        trackers.append(MlflowTracker(output.mlflow_uri, experiment, run_id, config, tags))
    return Trackers(trackers)


def check_trackers(output: Any) -> None:
    """Refuse a tracker whose package is missing before any work (one line, install hint)."""
    import importlib.util

    if output.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise FedgeError(
            "output.tensorboard: the tensorboard package is not installed; "
            "pip install 'fedge[tensorboard]'"
        )
    if output.mlflow_uri and importlib.util.find_spec("mlflow") is None:
        raise FedgeError(
            "output.mlflow_uri: the mlflow package is not installed; pip install 'fedge[mlflow]'"
        )


def close_trackers(trackers: Trackers, status: str, run_dir: Path) -> None:
    """End the trackers of a run that stopped: a tracker that fails now is logged, so the
    error that stopped the run is the one the user sees."""
    import logging

    try:
        trackers.finish(status, {}, run_dir)
    except Exception as exc:
        logging.getLogger(__name__).warning("a tracker could not record the end: %s", exc)

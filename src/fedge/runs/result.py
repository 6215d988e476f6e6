"""What every run starts with (store row, directory, config and versions) and returns."""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.core.errors import ConfigError, FedgeError
from fedge.experiment.config import ExperimentConfig
from fedge.results import RunStore, write_json


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_dir: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]


def versions() -> dict[str, str]:
    import pydantic
    import torch

    import fedge

    return {
        "fedge": fedge.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pydantic": pydantic.__version__,
    }


def open_run(
    store: RunStore,
    config: ExperimentConfig,
    out_dir: str | Path | None,
    data: Mapping[str, Any] | None = None,
) -> tuple[str, Path]:
    """A new run: its store row, and its directory with config.json and versions.json
    (what every run, training or study, starts with); ``data`` is where the dataset was read
    from (``versions.json`` keeps it under ``data``). Nothing is left behind when the
    directory cannot be written."""
    parent = check_out_dir(config, out_dir)
    resolved, packages = config.model_dump(), versions()
    run_id = store.create_run(config.name, resolved, config.seed, packages, "")
    run_dir = parent / run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
        store.set_run_dir(run_id, str(run_dir))
        write_json(resolved, run_dir / "config.json")
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        record: dict[str, Any] = {"seed": config.seed, "versions": packages, "started": started}
        if data is not None:
            record["data"] = dict(data)
        write_json(record, run_dir / "versions.json")
    except BaseException as exc:
        discard_run(store, run_id, run_dir)
        if isinstance(exc, OSError):
            raise FedgeError(f"cannot write the run directory {run_dir}: {exc.strerror}") from None
        raise
    return run_id, run_dir


def check_out_dir(config: ExperimentConfig, out_dir: str | Path | None) -> Path:
    """The parent of the run directory (``--out``, else ``output.dir``), checked before any
    work: it must be a writable directory, or one that can be created."""
    where = "--out" if out_dir is not None else "output.dir"
    parent = Path(out_dir if out_dir is not None else config.output.dir)
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(where, str(parent), f"a directory ({existing} is a file)")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(where, str(parent), f"a writable directory ({existing} is not)")
    return parent


def discard_run(store: RunStore, run_id: str, run_dir: Path) -> None:
    """Forget a run that never got to its first round: its store row and its directory."""
    store.delete_run(run_id)
    if run_dir.is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)

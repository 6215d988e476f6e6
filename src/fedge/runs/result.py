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
from fedge.results.files import atomic_write_text
from fedge.system.toml_writer import to_toml


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
        atomic_write_text(run_dir / WRITTEN_CONFIG, written_toml(config))
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


WRITTEN_CONFIG = "config.toml"
"""The config as the user wrote it (file and ``--set``): ``fedge run RUN_DIR/config.toml``
runs it again; config.json holds every key, defaults included."""


def written_toml(config: ExperimentConfig) -> str:
    """The keys the config file and ``--set`` gave, as TOML (None values left out)."""
    given = config.model_dump(exclude_unset=True, by_alias=True, mode="json")
    return to_toml(_without_none(given))


def _without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


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

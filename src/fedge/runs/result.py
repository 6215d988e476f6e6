"""What every run starts with (store row, directory, config and versions) and returns."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    store: RunStore, config: ExperimentConfig, out_dir: str | Path | None
) -> tuple[str, Path]:
    """A new run: its store row, and its directory with config.json and versions.json
    (what every run, training or study, starts with)."""
    resolved, packages = config.model_dump(), versions()
    run_id = store.create_run(config.name, resolved, config.seed, packages, "")
    run_dir = Path(out_dir if out_dir is not None else config.output.dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    store.set_run_dir(run_id, str(run_dir))
    write_json(resolved, run_dir / "config.json")
    write_json({"seed": config.seed, "versions": packages}, run_dir / "versions.json")
    return run_id, run_dir

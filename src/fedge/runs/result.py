"""What a finished run returns, and the package versions every run records."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


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

"""Shared fixtures: a tiny, fast experiment config on the embedded digits dataset."""

from pathlib import Path

import pytest

TINY = """
name = "tiny"
seed = 3
rounds = 3
algorithm = "fedavg"

[data]
dataset = "digits"
partition = "dirichlet"
alpha = 0.5
min_size = 5

[model]
name = "mlp"

[training]
lr = 0.1
batch_size = 16

[federation]
clients_per_round = 4

[system]
edges = 2
devices = 10
spacing_m = 1000.0
coverage_m = 600.0

[output]
progress = false
"""


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A TOML file of a 3-round FedAvg run on digits whose outputs go under tmp_path."""
    path = tmp_path / "tiny.toml"
    store = (tmp_path / "runs" / "fedge.sqlite").as_posix()
    path.write_text(TINY + f'dir = "{(tmp_path / "runs").as_posix()}"\nstore = "{store}"\n')
    return path

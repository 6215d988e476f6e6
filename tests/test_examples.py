"""Every example config is valid and names only registered components."""

from pathlib import Path

import pytest

from fedge.experiment.build import check_names
from fedge.experiment.config import load_config

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").rglob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_config_is_valid(path):
    cfg = load_config(path, ["rounds=1"])
    check_names(cfg)
    assert cfg.rounds == 1


def test_quickstart_is_the_issue_workload():
    cfg = load_config(Path(__file__).parents[1] / "examples" / "quickstart.toml")
    assert (cfg.algorithm, cfg.data.dataset, cfg.model.name) == (
        "fedavg",
        "fashion_mnist",
        "fedavg_cnn",
    )
    assert (cfg.system.devices, cfg.federation.clients_per_round) == (100, 10)
    assert (cfg.data.partition, cfg.data.alpha) == ("dirichlet", 0.5)

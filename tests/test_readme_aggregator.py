"""The README's custom aggregator works as written, by import path, on plain and
compressed uplinks: one round moves the model half as far as FedAvg does."""

import re
import sys
from pathlib import Path

import pytest
import torch

from fedge.core.update import flatten
from fedge.experiment.build import build
from fedge.experiment.config import load_config

README = Path(__file__).parents[1] / "README.md"
COMPRESSED = "compression=[{link='device-cloud', method='fp16'}]"


def _readme_module(tmp_path: Path) -> None:
    code = re.search(r"```python\n(# my_rules\.py.*?)```", README.read_text(), re.S)
    assert code is not None, "the README lost its custom aggregator example"
    (tmp_path / "my_rules.py").write_text(code.group(1))


def _step(cfg) -> torch.Tensor:
    exp = build(cfg)
    final = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 1).final_state
    return flatten(final) - flatten(exp.initial_state)


@pytest.mark.parametrize("extra", [[], [COMPRESSED]], ids=["dense", "compressed"])
def test_readme_aggregator_halves_the_fedavg_step(tiny_config, tmp_path, monkeypatch, extra):
    _readme_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["rounds=1", *extra]
    plain = _step(load_config(tiny_config, base))
    rule = [
        "federation.aggregator='my_rules:shrunk_mean'",
        "federation.aggregator_params={shrink=0.5}",
    ]
    shrunk = _step(load_config(tiny_config, [*base, *rule]))
    torch.testing.assert_close(shrunk, 0.5 * plain, atol=1e-5, rtol=1e-4)
    sys.modules.pop("my_rules", None)

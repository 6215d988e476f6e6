"""Stateful algorithms under a tiny state memory budget: every device's state leaves memory
between its rounds and comes back from disk, and the run is bit-identical to one without."""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from fedge.experiment.build import build
from fedge.experiment.config import load_config

TINY_BUDGET = "population.state_memory_mb=0.000001"  # one byte: no state stays resident

CASES = {
    # the error-feedback residual of a compressor, in the client pipeline's memory
    "fedavg_topk_feedback": (
        [
            "compression=[{link='device-cloud', method='topk', ratio=0.05, error_feedback=true}]",
            "federation.clients_per_round=6",
        ],
        ("transforms", "device-cloud/0", "residual"),
    ),
    "fedper": (["algorithm='fedper'", "federation.clients_per_round=6"], ("head",)),
    "ditto": (["algorithm='ditto'", "federation.clients_per_round=6"], ("personal",)),
    "dpmn": (["algorithm='dpmn'", "system.devices=6"], ("model",)),
    # local DP: the device's count of releases (what its accountant entry is made from)
    "local_dp": (
        ["privacy.mechanism='local'", "federation.clients_per_round=6"],
        ("transforms", "device-cloud/0", "releases"),
    ),
}


def _run(tiny_config, sets):
    exp = build(load_config(tiny_config, [*sets, "rounds=3"]))
    records = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 3)
    return exp, records


def assert_same(a, b, path="$"):
    """Deep equality: tensors bit for bit with their dtype, floats exactly (NaN = NaN)."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, float):
        assert a == b or (math.isnan(a) and math.isnan(b)), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _timeless(rows):
    return [{k: v for k, v in row.items() if "wall" not in k} for row in rows]


def _dig(state, keys):
    for key in keys:
        state = state[key]
    return state


@pytest.mark.parametrize("case", list(CASES))
def test_a_tiny_budget_run_is_bit_identical_to_an_unlimited_one(tiny_config, case):
    sets, keys = CASES[case]
    plain, plain_records = _run(tiny_config, sets)
    limited, limited_records = _run(tiny_config, [*sets, TINY_BUDGET])
    spill = limited.nodes.apps.spill
    assert spill.evictions > 0 and spill.restores > 0  # states really went and came back
    assert limited.nodes.apps.made <= 1
    assert_same(plain_records.final_state, limited_records.final_state, "final model")
    assert_same(_timeless(plain_records.metrics), _timeless(limited_records.metrics), "rows")
    devices = plain.system.ids("device")
    stateful = [d for d in devices if plain.nodes.apps[d].state]
    assert stateful and all(_dig(plain.nodes.apps[d].state, keys) is not None for d in stateful)
    for d in devices:  # each one read back from the store now
        assert_same(plain.nodes.apps[d].state, limited.nodes.apps[d].state, d)


@pytest.mark.parametrize("case", list(CASES))
def test_a_device_state_is_the_same_after_it_is_dropped_and_restored(tiny_config, case):
    sets, keys = CASES[case]
    exp, _ = _run(tiny_config, [*sets, "population.state_memory_mb=1000"])
    apps = exp.nodes.apps
    assert apps.spill.evictions == 0  # everything fits
    device = next(d for d in exp.system.ids("device") if apps[d].state)
    before = copy.deepcopy(apps[device].state)
    value = _dig(before, keys)
    if isinstance(value, dict):  # a model's worth of tensors
        assert value and all(isinstance(t, torch.Tensor) for t in value.values())
    else:  # a counter
        assert isinstance(value, int) and value >= 1
    app = apps[device]
    apps.evict(device)
    assert apps.spill.spilled[device] > 0 and apps.made == len(apps.spill.sizes)
    restored = apps[device]
    assert restored is not app and apps.spill.restores == 1
    assert_same(before, restored.state)

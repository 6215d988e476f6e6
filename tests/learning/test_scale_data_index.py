"""Data by index: device datasets are views into the one training array, equal to copies."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fedge.experiment.build import _local_test_split, build
from fedge.experiment.config import load_config
from fedge.learning import IndexedDataset, load_digits_dataset, local_train, partition
from fedge.learning.data import make_synthetic
from fedge.learning.models import build_model
from fedge.learning.training import TrainConfig, evaluate, state_of


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_view_holds_indices_and_equals_the_copy() -> None:
    train, _ = make_synthetic(60, 10, seed=1)
    idx = np.array([5, 0, 59, 17, 17])
    view, copy = train.view(idx), train.subset(idx)
    assert isinstance(view, IndexedDataset)
    assert view.base is train
    assert np.shares_memory(view.base.x.numpy(), train.x.numpy())
    assert torch.equal(view.x, copy.x) and torch.equal(view.y, copy.y)
    assert np.array_equal(view.labels, copy.labels) and len(view) == len(copy) == 5
    assert view.input_shape == copy.input_shape
    inner = view.view([4, 1])  # a view of a view indexes the base directly
    assert inner.base is train and inner.indices.tolist() == [17, 0]
    assert torch.equal(view.subset([2, 3]).x, train.x[[59, 17]])


def test_view_rejects_indices_outside_the_base() -> None:
    train, _ = make_synthetic(20, 10, seed=1)
    with pytest.raises(Exception, match="indices"):
        train.view([0, 20])


def test_training_and_evaluation_on_a_view_equal_those_on_the_copy() -> None:
    train, _ = make_synthetic(80, 10, n_features=12, seed=2)
    idx = np.sort(np.random.default_rng(0).choice(80, size=33, replace=False))
    cfg = TrainConfig(lr=0.1, batch_size=8, epochs=2)
    results = []
    for data in (train.view(idx), train.subset(idx)):
        model = build_model("mlp", data.input_shape, data.n_classes, seed=4)
        res = local_train(model, data, cfg, torch.Generator().manual_seed(9))
        results.append((res, state_of(model), evaluate(model, data)))
    (r1, s1, e1), (r2, s2, e2) = results
    assert r1 == r2 and e1.as_dict() == e2.as_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


PINNED = {  # sha256 prefixes of the partitions before device data became views
    "iid": ({}, "01c7242c8223dc94"),
    "dirichlet": ({"alpha": 0.5, "min_size": 5}, "5117f8b4711f1bda"),
    "shards": ({"shards_per_client": 2}, "8dff5d2b928ac843"),
    "quantity_skew": ({"beta": 0.5}, "6b664d0b726a4c36"),
    "regional": ({"groups": [i % 3 for i in range(10)], "alpha": 0.5}, "342ca6afc9e701a2"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_partitioner_gives_the_same_indices_for_a_seed(name: str) -> None:
    train, _ = load_digits_dataset()
    params, digest = PINNED[name]
    parts = partition(name, train.labels, 10, 7, **params)
    blob = b"".join(p.astype("<i8").tobytes() + b"|" for p in parts)
    assert hashlib.sha256(blob).hexdigest()[:16] == digest


@pytest.mark.parametrize("algorithm", ["fedavg", "hierarchical", "dfl"])
def test_built_devices_share_the_training_array(tiny_config: Path, algorithm: str) -> None:
    cfg = load_config(tiny_config, [f'algorithm="{algorithm}"'])
    exp = build(cfg)
    base = exp.train.base if isinstance(exp.train, IndexedDataset) else exp.train
    own, tests = _local_test_split(cfg, exp.parts, algorithm == "dfl")
    for i, dev in enumerate(exp.system.ids("device")):
        learner = _learner(exp.nodes.apps[dev])
        for data, idx in ((learner.data, own[i]), (getattr(learner, "test", None), tests[i])):
            if data is None:
                continue
            assert isinstance(data, IndexedDataset)
            assert _storage(data.base.x) == _storage(base.x)
            old = exp.train.subset(idx)  # the per-device copy build used to make
            assert torch.equal(data.x, old.x) and torch.equal(data.y, old.y)


def _learner(app):
    for handler in app.handlers.values():
        owner = getattr(handler, "__self__", None)
        if owner is not None and hasattr(owner, "data"):
            return owner
    raise AssertionError(f"no learner in {app.node_id}")


def test_workers_build_on_the_drivers_arrays(tiny_config: Path) -> None:
    """What a Ray worker builds from the factory: devices index the driver's arrays (which
    the object store maps read-only into every worker), nothing is loaded again."""
    from fedge.experiment.build import SharedData, node_apps

    cfg = load_config(tiny_config)
    exp = build(cfg)
    shared = SharedData.of(exp.train, exp.test)
    for a in shared.arrays:
        a.flags.writeable = False  # as mapped from shared memory
    apps = node_apps(cfg, shared)
    data = _learner(apps["dev3"]).data
    assert np.shares_memory(data.base.x.numpy(), shared.arrays[0])
    assert torch.equal(data.x, _learner(exp.nodes.apps["dev3"]).data.x)

"""Clustered hierarchical FL (CFL cosine bipartitioning) and cluster purity."""

import pytest
import torch

from fedge.algorithms.clustered import bipartition, purity
from fedge.cli import main
from fedge.core import ConfigError
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.learning import ArrayDataset

SPLIT_AT_ONCE = [
    "algorithm='clustered_hfl'",
    "data.partition='iid'",
    "clustering.eps1=1e9",  # every cluster counts as stationary ...
    "clustering.eps2=0",  # ... with some device far from it: split whenever allowed
    "clustering.max_clusters=2",
    "clustering.warmup_rounds=1",
]


def test_purity_by_hand():
    clusters = {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1, "f": 2}
    groups = {"a": "x", "b": "x", "c": "y", "d": "y", "e": "y", "f": "x"}
    # cluster 0: 2 of x; cluster 1: 2 of y; cluster 2: 1 of x -> (2 + 2 + 1) / 6
    assert purity(clusters, groups) == pytest.approx(5 / 6)
    assert purity({"a": 0, "b": 1}, {"a": "x", "b": "x"}) == 1.0
    assert purity({"a": 0, "b": 0}, {"a": "x", "b": "y"}) == 0.5


def test_bipartition_minimises_the_largest_cross_similarity():
    # four updates in the plane: two near +x, two near +y; the best cut is {a, b} | {c, d}
    def vec(x, y):
        return {"w": torch.tensor([x, y])}

    updates = {"a": vec(1, 0.1), "b": vec(1, -0.1), "c": vec(0.1, 1), "d": vec(-0.2, 1)}
    assert bipartition(updates) == (["a", "b"], ["c", "d"])


@pytest.mark.slow
def test_opposite_label_populations_end_in_two_clusters(tiny_config):
    exp = build(load_config(tiny_config, [*SPLIT_AT_ONCE, "rounds=3"]))
    devices = exp.system.ids("device")
    flipped = set(devices[1::2])
    for d in flipped:  # population B: every label permuted (y -> 9 - y)
        trainer = exp.nodes.apps[d].handlers["train"].__self__
        data = trainer.data
        trainer.data = ArrayDataset(data.x, data.n_classes - 1 - data.y, data.n_classes)
    coordinator = exp.coordinator
    coordinator.groups = {d: d in flipped for d in devices}
    history = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 3)
    assert [row["clusters"] for row in history.metrics] == [1.0, 2.0, 2.0]
    sides = {}
    for d, c in coordinator.assign.items():
        sides.setdefault(c, set()).add(d)
    assert sorted(map(sorted, sides.values())) == sorted(
        [sorted(flipped), sorted(set(devices) - flipped)]
    )
    assert history.metrics[-1]["cluster_purity"] == 1.0
    # each cluster keeps its own model, and it moved apart from the other one
    a, b = coordinator.models.values()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_regional_partition_reports_purity(tiny_config):
    exp = build(load_config(tiny_config, [*SPLIT_AT_ONCE, "data.partition='regional'"]))
    history = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 1)
    # one cluster after round 1: purity is the share of the most populated edge
    edges = [exp.system.attachment(d, 0.0) for d in exp.system.ids("device")]
    share = max(edges.count(e) for e in set(edges)) / len(edges)
    assert history.metrics[0]["clusters"] == 1.0
    assert history.metrics[0]["cluster_purity"] == pytest.approx(share)
    assert "accuracy_std" in history.metrics[0]


def test_no_purity_without_true_groups(tiny_config):
    exp = build(load_config(tiny_config, ["algorithm='clustered_hfl'", "rounds=1"]))
    history = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 1)
    assert "cluster_purity" not in history.metrics[0]


@pytest.mark.parametrize(
    ("sets", "field"),
    [
        (["clustering.max_clusters=0"], "clustering.max_clusters"),
        (["clustering.eps1=-1"], "clustering.eps1"),
        (["clustering.linkage='single'"], "clustering.linkage"),
        (["data.local_test_fraction=0"], "data.local_test_fraction"),
    ],
)
def test_bad_clustering_configs_name_the_field(tiny_config, sets, field):
    with pytest.raises(ConfigError) as err:
        build(load_config(tiny_config, ["algorithm='clustered_hfl'", *sets]))
    assert err.value.field == field


def test_cli_bad_clustering_exits_2(tiny_config, capsys):
    code = main(["run", str(tiny_config), "--set", "clustering.max_clusters=0"])
    assert code == 2
    assert "clustering.max_clusters" in capsys.readouterr().err

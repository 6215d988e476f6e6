"""Partitioners: disjoint, reproducible, and skewed the way each one promises."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest

from fedge.core.errors import ConfigError
from fedge.learning.partition import (
    PARTITIONERS,
    PartitionError,
    class_histogram,
    format_histogram,
    partition,
)

partition_module = importlib.import_module("fedge.learning.partition")  # shadowed by the function
LABELS = np.repeat(np.arange(10), 300)  # 3000 samples, 10 balanced classes
CASES: list[tuple[str, dict[str, Any]]] = [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.3, "min_size": 5}),
    ("shards", {"shards_per_client": 2}),
    ("quantity_skew", {"beta": 0.5}),
    ("regional", {"groups": [0, 0, 0, 1, 1, 1, 2, 2, 2, 3], "alpha": 0.5}),
]


def shares(hist: np.ndarray) -> np.ndarray:
    return hist / hist.sum(axis=1, keepdims=True)


def test_every_partitioner_is_registered() -> None:
    assert {name for name, _ in CASES} <= set(PARTITIONERS.names())


@pytest.mark.parametrize(("name", "params"), CASES)
def test_indices_disjoint_sorted_and_in_range(name: str, params: dict[str, Any]) -> None:
    parts = partition(name, LABELS, 10, 0, **params)
    assert len(parts) == 10
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)  # every sample at most once
    assert joined.min() >= 0 and joined.max() < len(LABELS)
    assert all(np.all(np.diff(p) > 0) and p.dtype == np.int64 for p in parts)


@pytest.mark.parametrize(("name", "params"), CASES)
def test_reproducible_from_the_seed(name: str, params: dict[str, Any]) -> None:
    a = partition(name, LABELS, 10, 7, **params)
    b = partition(name, LABELS, 10, np.random.default_rng(7), **params)
    c = partition(name, LABELS, 10, 8, **params)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_uses_every_sample_in_equal_parts() -> None:
    parts = partition("iid", LABELS, 7, 0)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == len(LABELS) and max(sizes) - min(sizes) <= 1


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    def mean_max_share(alpha: float) -> float:
        values = []
        for seed in range(3):
            parts = partition("dirichlet", LABELS, 10, seed, alpha=alpha, min_size=5)
            values.append(shares(class_histogram(LABELS, parts, 10)).max(axis=1).mean())
        return float(np.mean(values))

    assert mean_max_share(0.1) > mean_max_share(1.0) + 0.2
    assert mean_max_share(100.0) < 0.25


def test_dirichlet_respects_min_size() -> None:
    parts = partition("dirichlet", LABELS, 20, 0, alpha=0.1, min_size=30)
    assert min(len(p) for p in parts) >= 30


def test_dirichlet_gives_up_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partition_module, "MAX_TRIES", 3)
    with pytest.raises(PartitionError, match="min_size"):
        partition("dirichlet", LABELS, 30, 0, alpha=0.01, min_size=90)
    with pytest.raises(ConfigError, match="min_size"):
        partition("dirichlet", LABELS, 10, 0, min_size=301)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shards_give_at_most_k_classes(k: int) -> None:
    labels = np.random.default_rng(1).integers(0, 10, size=2000)  # unbalanced classes
    parts = partition("shards", labels, 12, 0, shards_per_client=k)
    hist = class_histogram(labels, parts, 10)
    assert ((hist > 0).sum(axis=1) <= k).all()
    assert sum(len(p) for p in parts) == len(labels)


def test_quantity_skew_sizes_vary_labels_do_not() -> None:
    parts = partition("quantity_skew", LABELS, 10, 0, beta=0.5, min_size=20)
    sizes = np.array([len(p) for p in parts])
    assert sizes.sum() == len(LABELS) and sizes.min() >= 20
    assert sizes.std() / sizes.mean() > 0.3
    big = shares(class_histogram(LABELS, [parts[int(np.argmax(sizes))]], 10))
    assert big.max() < 0.2  # the largest client still sees an iid label mix


def test_regional_groups_share_a_distribution() -> None:
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    parts = partition("regional", LABELS, 12, 3, groups=groups, alpha=0.3)
    s = shares(class_histogram(LABELS, parts, 10))
    dist = np.abs(s[:, None, :] - s[None, :, :]).sum(axis=2)  # L1 between clients
    same = np.equal.outer(groups, groups) & ~np.eye(12, dtype=bool)
    other = ~np.equal.outer(groups, groups)
    assert dist[same].mean() < 0.5 * dist[other].mean()


def test_regional_accepts_edge_names_and_checks_length() -> None:
    parts = partition("regional", LABELS, 4, 0, groups=["e1", "e1", "e2", "e2"])
    assert len(parts) == 4
    with pytest.raises(ConfigError, match="groups"):
        partition("regional", LABELS, 4, 0, groups=[0, 1])


def test_partition_validates_its_input() -> None:
    with pytest.raises(ConfigError, match="shard_per_client") as info:
        partition("shards", LABELS, 10, 0, shard_per_client=2)
    assert "shards_per_client" in info.value.allowed
    with pytest.raises(ConfigError, match="dirichlet"):
        partition("dirichlett", LABELS, 10, 0)
    with pytest.raises(ConfigError, match="n_clients"):
        partition("iid", LABELS, 0, 0)
    with pytest.raises(ConfigError, match="labels"):
        partition("iid", LABELS.astype(float), 10, 0)
    with pytest.raises(ConfigError, match="seed"):
        partition("iid", LABELS, 10, "seven")
    with pytest.raises(ConfigError, match="alpha"):
        partition("dirichlet", LABELS, 10, 0, alpha=0.0)


def test_class_histogram_is_the_report() -> None:
    parts = partition("shards", LABELS, 5, 0, shards_per_client=2)
    hist = class_histogram(LABELS, parts, 10)
    assert hist.shape == (5, 10) and hist.sum() == len(LABELS)
    text = format_histogram(hist, [f"c{i}" for i in range(10)])
    assert len(text.splitlines()) == 6 and "c9" in text

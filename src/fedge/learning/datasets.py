"""The dataset registry: name -> loader(**params) -> (train, test)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedge.core.registry import Registry
from fedge.learning import fashion
from fedge.learning._params import check_params
from fedge.learning.data import ArrayDataset, load_digits_dataset, make_synthetic
from fedge.learning.fashion import load_fashion_mnist
from fedge.learning.synthetic import load_leaf_synthetic

Loader = Callable[..., tuple[ArrayDataset, ArrayDataset]]

DATASETS: Registry[Loader] = Registry("dataset")
DATASETS.add("fashion_mnist", load_fashion_mnist, "Fashion-MNIST (60000 / 10000, 1×28×28)")
DATASETS.add("digits", load_digits_dataset, "scikit-learn 8×8 digits (1437 / 360, 1×8×8)")
DATASETS.add("synthetic", make_synthetic, "Gaussian classes with class-dependent means")
DATASETS.add(
    "leaf_synthetic",
    load_leaf_synthetic,
    "Synthetic(alpha, beta) of FedProx / LEAF: a federated dataset, each client made on demand",
)


def load_dataset(name: str, **params: Any) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of a registered dataset; unknown parameters are rejected by name."""
    loader = DATASETS.get(name, "dataset")
    check_params(f"dataset {name!r}", loader, params)
    return loader(**params)


def _digits_source() -> dict[str, Any]:
    import hashlib
    from pathlib import Path

    import sklearn.datasets

    path = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "?"
    return {"dataset": "digits", "dir": str(path.parent), "files": {path.name: digest}}


def dataset_source(name: str, **params: Any) -> dict[str, Any]:
    """Where a dataset's files are read from: ``{"dataset", "dir", "files": {name: sha256}}``
    for datasets read from files, ``{"dataset", "generated": True}`` for generated ones,
    ``{"dataset"}`` alone for a user's loader (its files are its own business)."""
    if name == "fashion_mnist":
        return fashion.source(params.get("root"))
    if name == "digits":
        return _digits_source()
    if name == "synthetic":
        return {"dataset": name, "generated": True}
    return {"dataset": name}

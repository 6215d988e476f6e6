"""Datasets as plain tensors: the digits and synthetic sets, and a user's own arrays.

Everything is held in memory as one ``ArrayDataset`` (features ``x`` and int64 labels ``y``)
so that local training can index minibatches directly instead of going through a DataLoader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedge.core.errors import ConfigError, FedgeError


class DatasetNotFoundError(FedgeError):
    """A dataset that is not on this machine; the message says how to get it."""


@dataclass(frozen=True)
class ArrayDataset:
    """Features ``x`` (float32, N×C×H×W or N×F) and labels ``y`` (int64, N) in memory."""

    x: torch.Tensor
    y: torch.Tensor
    n_classes: int
    name: str = ""
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.x.ndim < 2 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ConfigError(
                "dataset.shape",
                (tuple(self.x.shape), tuple(self.y.shape)),
                "x of shape N×... (at least 2-D) and y of shape N with the same N",
            )
        if self.y.dtype != torch.int64 or not self.x.is_floating_point():
            raise ConfigError(
                "dataset.dtype", (self.x.dtype, self.y.dtype), "floating-point x and int64 y"
            )
        if self.n_classes < 1:
            raise ConfigError("dataset.n_classes", self.n_classes, "an integer >= 1")
        if self.class_names and len(self.class_names) != self.n_classes:
            raise ConfigError("dataset.class_names", self.class_names, "one name per class")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch dimension)."""
        return tuple(int(s) for s in self.x.shape[1:])

    @property
    def labels(self) -> np.ndarray:
        """The labels as a numpy int64 array (what the partitioners take)."""
        return self.y.cpu().numpy()

    def subset(self, indices: np.ndarray | Sequence[int] | torch.Tensor) -> ArrayDataset:
        """The samples at ``indices`` (copied), keeping classes and names."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.y.device)
        return ArrayDataset(self.x[idx], self.y[idx], self.n_classes, self.name, self.class_names)

    def view(self, indices: np.ndarray | Sequence[int] | torch.Tensor) -> IndexedDataset:
        """The samples at ``indices`` as an index view: no copy of the features is kept."""
        return IndexedDataset(self, indices)

    def to(self, device: torch.device | str) -> ArrayDataset:
        """The same dataset with its tensors on ``device``."""
        return ArrayDataset(
            self.x.to(device), self.y.to(device), self.n_classes, self.name, self.class_names
        )


class IndexedDataset(ArrayDataset):
    """The rows ``indices`` of a ``base`` dataset, addressed by index (data by index).

    A device's dataset in a federation of many devices: it holds only its int64 indices
    (8 bytes a sample) and a reference to the one shared base array, so building a
    population costs O(samples) once instead of a copy per device. ``x`` and ``y`` gather
    the rows when read (``index_select``, the same values a copy holds), so the copy lives
    only while the device trains or evaluates. A view of a view indexes the base directly.
    The base may be read-only memory (a Ray object-store mapping); nothing writes to it.
    """

    base: ArrayDataset
    indices: np.ndarray

    def __init__(
        self, base: ArrayDataset, indices: np.ndarray | Sequence[int] | torch.Tensor
    ) -> None:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= len(base))):
            raise ConfigError("indices", idx.shape, f"1-D indices into 0..{len(base) - 1}")
        if isinstance(base, IndexedDataset):
            idx, base = base.indices[idx], base.base
        for key, value in (
            ("base", base),
            ("indices", idx),
            ("n_classes", base.n_classes),
            ("name", base.name),
            ("class_names", base.class_names),
        ):
            object.__setattr__(self, key, value)

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        return torch.index_select(t, 0, torch.from_numpy(self.indices).to(t.device))

    @property
    def x(self) -> torch.Tensor:
        """The view's features, gathered from the base (a fresh tensor on each read)."""
        return self._rows(self.base.x)

    @property
    def y(self) -> torch.Tensor:
        """The view's labels, gathered from the base."""
        return self._rows(self.base.y)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __repr__(self) -> str:
        return f"IndexedDataset({self.name!r}, {len(self)} of {len(self.base)} samples)"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.base.input_shape

    @property
    def labels(self) -> np.ndarray:
        labels: np.ndarray = self.base.labels[self.indices]
        return labels

    def subset(self, indices: np.ndarray | Sequence[int] | torch.Tensor) -> ArrayDataset:
        return self.base.subset(self.indices[np.asarray(indices, dtype=np.int64)])

    def to(self, device: torch.device | str) -> ArrayDataset:
        return ArrayDataset(
            self.x.to(device), self.y.to(device), self.n_classes, self.name, self.class_names
        )


def _as_features(x: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim == 1:
        raise ConfigError("x", tuple(t.shape), "an N×F, N×H×W or N×C×H×W array")
    if t.ndim == 3:  # N×H×W grayscale images get their channel axis
        t = t.unsqueeze(1)
    return t.detach().to(torch.float32).contiguous()


def _integral(arr: np.ndarray) -> bool:
    if arr.dtype.kind in "iu":
        return True
    return arr.dtype.kind == "f" and bool(np.all(np.equal(np.mod(arr, 1), 0)))


def _as_labels(y: Any) -> torch.Tensor:
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim != 1:
        raise ConfigError("y", arr.shape, "a 1-D array of integer class labels")
    if arr.size and not _integral(arr):
        raise ConfigError("y", str(arr.dtype), "integer class labels")
    labels = torch.as_tensor(arr.astype(np.int64))
    if labels.numel() and int(labels.min()) < 0:
        raise ConfigError("y", int(labels.min()), "class labels >= 0")
    return labels


def from_arrays(
    x: Any,
    y: Any,
    n_classes: int | None = None,
    name: str = "custom",
    class_names: Sequence[str] = (),
) -> ArrayDataset:
    """A dataset from a user's numpy arrays or tensors; N×H×W images get a channel axis.

    ``n_classes`` defaults to the largest label + 1.
    """
    features, labels = _as_features(x), _as_labels(y)
    if features.shape[0] != labels.shape[0]:
        raise ConfigError("y", labels.shape[0], f"{features.shape[0]} labels, one per row of x")
    top = int(labels.max()) + 1 if labels.numel() else 1
    classes = top if n_classes is None else n_classes
    if classes < top:
        raise ConfigError("n_classes", n_classes, f"at least the largest label + 1 = {top}")
    return ArrayDataset(features, labels, classes, name, tuple(class_names))


def from_torch_dataset(
    dataset: Any, n_classes: int | None = None, name: str = "custom"
) -> ArrayDataset:
    """A dataset from any map-style ``torch.utils.data.Dataset`` of (x, label) pairs."""
    try:
        pairs = [dataset[i] for i in range(len(dataset))]
    except TypeError as exc:
        raise ConfigError("dataset", type(dataset).__name__, "a map-style dataset") from exc
    if not pairs:
        raise ConfigError("dataset", "empty", "a dataset with at least one sample")
    xs = torch.stack([torch.as_tensor(np.asarray(p[0])) for p in pairs])
    ys = [int(p[1]) for p in pairs]
    return from_arrays(xs, ys, n_classes, name)


def load_digits_dataset(
    test_fraction: float = 0.2, seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's 8×8 digits (1797 samples) as 1×8×8 images in [0, 1], split 80/20.

    The split is stratified and fixed by ``seed``, so it is the same on every machine.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("test_fraction", test_fraction, "a number strictly between 0 and 1")
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    names = tuple(str(n) for n in bunch.target_names)
    return (
        from_arrays(x_tr, y_tr, 10, "digits", names),
        from_arrays(x_te, y_te, 10, "digits", names),
    )


def make_synthetic(
    n_train: int = 1000,
    n_test: int = 200,
    n_features: int = 20,
    input_shape: Sequence[int] | None = None,
    n_classes: int = 10,
    seed: int = 0,
    class_sep: float = 1.0,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Gaussian classes: x = mean[y] + N(0, 1), class means ~ N(0, class_sep²); learnable.

    ``input_shape`` (e.g. (1, 8, 8)) overrides ``n_features`` and reshapes each sample.
    """
    shape = tuple(int(s) for s in input_shape) if input_shape else (int(n_features),)
    _check_positive("n_train", n_train)
    _check_positive("n_test", n_test)
    _check_positive("n_features", math.prod(shape))
    if n_classes < 2:
        raise ConfigError("n_classes", n_classes, "an integer >= 2")
    rng = np.random.default_rng(seed)
    dim = math.prod(shape)
    means = rng.normal(0.0, class_sep, size=(n_classes, dim))

    def draw(n: int) -> ArrayDataset:
        y = rng.integers(0, n_classes, size=n)
        x = (means[y] + rng.normal(size=(n, dim))).astype(np.float32).reshape(n, *shape)
        return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y), n_classes, "synthetic")

    return draw(n_train), draw(n_test)


def _check_positive(field: str, value: int) -> None:
    if int(value) < 1:
        raise ConfigError(field, value, "an integer >= 1")

"""Partitioners: split a dataset's sample indices among clients, reproducibly from a seed.

Every partitioner is ``fn(labels, n_clients, rng, **params) -> list[np.ndarray]``: one sorted
int64 index array per client, each sample used at most once. ``partition`` is the validated
entry point; ``class_histogram`` is the partition report (clients × classes counts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedge.core.errors import ConfigError, FedgeError
from fedge.core.registry import Registry
from fedge.learning._params import check_params

Partitioner = Callable[..., list[np.ndarray]]
PARTITIONERS: Registry[Partitioner] = Registry("partitioner")
MAX_TRIES = 1000


class PartitionError(FedgeError):
    """A partition whose constraints could not be met (e.g. min_size under strong skew)."""


def _sorted(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _positive(field: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(field, value, "a number > 0")


def _split_by_share(indices: np.ndarray, shares: np.ndarray) -> list[np.ndarray]:
    """Cut ``indices`` into len(shares) consecutive pieces of about ``share * len`` each."""
    total = shares.sum()
    weights = shares / total if total > 0 else np.full(len(shares), 1.0 / len(shares))
    cuts = (np.cumsum(weights) * len(indices)).astype(np.int64)[:-1]
    return np.split(indices, cuts)


def _concat(pieces: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(pieces) if len(pieces) else np.zeros(0, dtype=np.int64)


@PARTITIONERS.register("iid")
def iid(labels: np.ndarray, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, then deal equal-sized slices (sizes differ by at most one)."""
    return _sorted(np.array_split(rng.permutation(len(labels)), n_clients))


def _dirichlet_once(
    labels: np.ndarray, n_clients: int, rng: np.random.Generator, alpha: float
) -> list[np.ndarray]:
    cap = len(labels) / n_clients
    parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    sizes = np.zeros(n_clients)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        shares = rng.dirichlet(np.full(n_clients, alpha)) * (sizes < cap)
        if shares.sum() == 0:
            shares = np.ones(n_clients)
        for k, piece in enumerate(_split_by_share(idx, shares)):
            parts[k].append(piece)
            sizes[k] += len(piece)
    return [_concat(p) for p in parts]


def _retry(
    draw: Callable[[], list[np.ndarray]], min_size: int, what: str, hint: str
) -> list[np.ndarray]:
    for _ in range(MAX_TRIES):
        parts = draw()
        if min(len(p) for p in parts) >= min_size:
            return _sorted(parts)
    raise PartitionError(
        f"{what}: no partition with every client holding >= {min_size} samples after "
        f"{MAX_TRIES} tries; {hint}"
    )


def _check_min_size(min_size: int, n_clients: int, n: int) -> None:
    if min_size < 0 or min_size * n_clients > n:
        raise ConfigError("min_size", min_size, f"0..{n // n_clients} ({n} samples)")


@PARTITIONERS.register("dirichlet")
def dirichlet(
    labels: np.ndarray,
    n_clients: int,
    rng: np.random.Generator,
    alpha: float = 0.5,
    min_size: int = 10,
) -> list[np.ndarray]:
    """Label skew: each class split among clients by shares ~ Dirichlet(alpha).

    As in NIID-Bench (Li et al. 2022), a client already holding more than N / n_clients
    samples gets no share of later classes. Redrawn until every client has ``min_size``.
    """
    _positive("alpha", alpha)
    _check_min_size(min_size, n_clients, len(labels))
    return _retry(
        lambda: _dirichlet_once(labels, n_clients, rng, alpha),
        min_size,
        f"dirichlet(alpha={alpha})",
        "raise alpha or lower min_size",
    )


def _shard_counts(class_sizes: np.ndarray, n_shards: int) -> np.ndarray:
    """Shards per class proportional to class size (largest remainder), at most one per sample."""
    exact = class_sizes / class_sizes.sum() * n_shards
    counts: np.ndarray = np.minimum(np.floor(exact).astype(np.int64), class_sizes)
    order = np.argsort(-(exact - counts), kind="stable")
    for c in order[: n_shards - int(counts.sum())]:
        counts[c] += counts[c] < class_sizes[c]
    return counts


@PARTITIONERS.register("shards")
def shards(
    labels: np.ndarray, n_clients: int, rng: np.random.Generator, shards_per_client: int = 2
) -> list[np.ndarray]:
    """Pathological label skew (McMahan et al. 2017): sort by label, cut shards, deal k each.

    Shards are cut inside each class (a class gets shards in proportion to its size), so a
    shard holds one class and a client at most ``shards_per_client`` classes. With fewer
    shards than classes the smallest classes get none and are left out.
    """
    if shards_per_client < 1:
        raise ConfigError("shards_per_client", shards_per_client, "an integer >= 1")
    n_shards = n_clients * shards_per_client
    if n_shards > len(labels):
        raise ConfigError("shards_per_client", shards_per_client, "n_clients * k <= samples")
    classes, sizes = np.unique(labels, return_counts=True)
    pieces: list[np.ndarray] = []
    for c, k in zip(classes, _shard_counts(sizes, n_shards), strict=True):
        if k > 0:
            pieces += np.array_split(rng.permutation(np.flatnonzero(labels == c)), int(k))
    order = rng.permutation(len(pieces))
    return _sorted([_concat([pieces[s] for s in order[i::n_clients]]) for i in range(n_clients)])


@PARTITIONERS.register("quantity_skew")
def quantity_skew(
    labels: np.ndarray,
    n_clients: int,
    rng: np.random.Generator,
    beta: float = 0.5,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Client sizes ~ min_size + Multinomial(N - n·min_size, Dirichlet(beta)); labels iid."""
    _positive("beta", beta)
    _check_min_size(min_size, n_clients, len(labels))
    spare = len(labels) - min_size * n_clients
    sizes = min_size + rng.multinomial(spare, rng.dirichlet(np.full(n_clients, beta)))
    return _sorted(np.split(rng.permutation(len(labels)), np.cumsum(sizes)[:-1]))


def _regional_once(
    labels: np.ndarray, group_of: np.ndarray, rng: np.random.Generator, alpha: float
) -> list[np.ndarray]:
    n_groups = int(group_of.max()) + 1
    classes = np.unique(labels)
    mix = rng.dirichlet(np.full(len(classes), alpha), size=n_groups)  # groups × classes
    parts: list[list[np.ndarray]] = [[] for _ in group_of]
    for j, c in enumerate(classes):
        shares = mix[group_of, j]
        idx = rng.permutation(np.flatnonzero(labels == c))
        for k, piece in enumerate(_split_by_share(idx, shares)):
            parts[k].append(piece)
    return [_concat(p) for p in parts]


@PARTITIONERS.register("regional")
def regional(
    labels: np.ndarray,
    n_clients: int,
    rng: np.random.Generator,
    groups: Sequence[int | str] = (),
    alpha: float = 0.5,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Regional skew: clients of one group (devices under one edge) share a label mix.

    ``groups`` holds one group id (an int or a name, e.g. the edge) per client. Each group
    draws class weights q_g ~ Dirichlet(alpha); every class is split among all clients in
    proportion to their group's weight for it, so clients of a group are iid draws from the
    same regional distribution while groups differ.
    """
    _positive("alpha", alpha)
    _check_min_size(min_size, n_clients, len(labels))
    group_ids = np.asarray(list(groups))
    if group_ids.shape != (n_clients,):
        raise ConfigError("groups", list(groups), f"one group id per client ({n_clients} ids)")
    _, group_of = np.unique(group_ids, return_inverse=True)
    return _retry(
        lambda: _regional_once(labels, group_of, rng, alpha),
        min_size,
        f"regional(alpha={alpha})",
        "raise alpha or lower min_size",
    )


def _as_rng(seed_or_rng: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if isinstance(seed_or_rng, int | np.integer) and not isinstance(seed_or_rng, bool):
        return np.random.default_rng(int(seed_or_rng))
    raise ConfigError("seed", seed_or_rng, "an int seed or a numpy Generator")


def _as_labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ConfigError("labels", f"{arr.dtype} array of shape {arr.shape}", "1-D integers")
    return arr.astype(np.int64, copy=False)


def partition(
    name: str,
    labels: Any,
    n_clients: int,
    seed_or_rng: int | np.random.Generator,
    **params: Any,
) -> list[np.ndarray]:
    """Partition ``labels`` among ``n_clients`` with the named partitioner, validating input."""
    fn = PARTITIONERS.get(name, "partition")
    check_params(f"partition {name!r}", fn, params, reserved=("labels", "n_clients", "rng"))
    arr = _as_labels(labels)
    if not 1 <= n_clients <= len(arr):
        raise ConfigError("n_clients", n_clients, f"1..{len(arr)} (one sample per client)")
    return fn(arr, n_clients, _as_rng(seed_or_rng), **params)


def class_histogram(labels: Any, parts: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Clients × classes sample counts of a partition (the partition report)."""
    arr = _as_labels(labels)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ConfigError("labels", (int(arr.min()), int(arr.max())), f"0..{n_classes - 1}")
    rows = [np.bincount(arr[p], minlength=n_classes) for p in parts]
    return np.stack(rows) if rows else np.zeros((0, n_classes), dtype=np.int64)


def format_histogram(hist: np.ndarray, class_names: Sequence[str] = ()) -> str:
    """A plain-text table of a class histogram, one row per client with its total."""
    names = list(class_names) or [str(c) for c in range(hist.shape[1])]
    width = max(6, *(len(n) for n in names))
    head = "client " + " ".join(n.rjust(width) for n in names) + "  total".rjust(width + 1)
    rows = [
        f"{i:>6} " + " ".join(f"{v:>{width}d}" for v in row) + f" {int(row.sum()):>{width}d}"
        for i, row in enumerate(hist)
    ]
    return "\n".join([head, *rows])

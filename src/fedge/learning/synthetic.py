"""Synthetic(α, β): a federated dataset whose clients are generated on demand from their seed.

Source: Li et al., "Federated Optimization in Heterogeneous Networks" (FedProx, MLSys 2020),
§5.1 and its generator ``data/synthetic_*/generate_niid.py``, the Synthetic(α, β) data that
LEAF (Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018) ships as well. For
client k:

- u_k ~ N(0, α), B_k ~ N(0, β) (the generator's second argument: a standard deviation);
- W_k ∈ R^{d×C}, b_k ∈ R^C with entries ~ N(u_k, 1) (W and b share the mean u_k, as the
  generator's ``mean_b = mean_W``); v_k ∈ R^d with entries ~ N(B_k, 1);
- x ~ N(v_k, Σ) with Σ diagonal, Σ_jj = j^-1.2 (j = 1..d); y = argmax(softmax(x W_k + b_k));
- n_k = ⌊LogNormal(4, 2)⌋ + 50 samples (the generator's power law), optionally capped.

d = 60 and C = 10 as published. α controls how much the local models differ, β how much
the local data differ. Every client's data is a deterministic function of (seed, k): its
parameters and training samples come from a generator seeded with ``derive_seed(seed,
"client", k)``, its test samples from ``derive_seed(seed, "client", k, "test")``; the sizes
of all clients come from one vectorised draw, so a population of a million clients costs
8 MB of sizes and nothing else until a client is asked for. The shared test set is fresh
samples of ``test_clients`` clients drawn at random from the population.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedge.core.errors import ConfigError
from fedge.core.node import derive_seed
from fedge.learning.data import ArrayDataset

DIM = 60
CLASSES = 10
NAME = "leaf_synthetic"


@dataclass(frozen=True)
class SyntheticFederation:
    """The population of Synthetic(α, β): ``n_clients`` clients, each made on demand."""

    n_clients: int
    alpha: float = 1.0
    beta: float = 1.0
    seed: int = 0
    dim: int = DIM
    n_classes: int = CLASSES
    max_samples: int = 0
    """Cap on a client's samples (0: none, as published; the log-normal tail is long)."""
    test_clients: int = 100
    test_samples: int = 20
    """Fresh samples per test client in the shared test set."""
    sizes: np.ndarray = field(init=False, repr=False, compare=False)
    checkpoint_by_reference = True

    def __post_init__(self) -> None:
        for name in ("n_clients", "dim", "test_clients", "test_samples"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"data.synthetic.{name}", getattr(self, name), "an integer >= 1")
        if self.n_classes < 2:
            raise ConfigError("data.synthetic.n_classes", self.n_classes, "an integer >= 2")
        for name in ("alpha", "beta"):
            if not float(getattr(self, name)) >= 0:
                raise ConfigError(f"data.synthetic.{name}", getattr(self, name), "a number >= 0")
        if self.max_samples < 0:
            raise ConfigError("data.synthetic.max_samples", self.max_samples, "0 (none) or >= 1")
        rng = np.random.default_rng(derive_seed(self.seed, "sizes"))
        sizes = rng.lognormal(4, 2, self.n_clients).astype(np.int64) + 50
        if self.max_samples:
            sizes = np.minimum(sizes, self.max_samples)
        object.__setattr__(self, "sizes", sizes)

    def _model(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = rng.normal(0.0, self.alpha)
        b_mean = rng.normal(0.0, self.beta)
        v = rng.normal(b_mean, 1.0, self.dim)
        w = rng.normal(u, 1.0, (self.dim, self.n_classes))
        b = rng.normal(u, 1.0, self.n_classes)
        return v, w, b

    def _draw(
        self, n: int, model: tuple[np.ndarray, np.ndarray, np.ndarray], rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v, w, b = model
        std = np.arange(1, self.dim + 1, dtype=np.float64) ** -0.6  # Σ_jj = j^-1.2
        x = v + rng.standard_normal((n, self.dim)) * std
        y = np.argmax(x @ w + b, axis=1)
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))

    def _check(self, k: int) -> int:
        if not 0 <= int(k) < self.n_clients:
            raise ConfigError("client", k, f"0..{self.n_clients - 1}")
        return int(k)

    def client_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of client k's training samples, drawn afresh (the same every call)."""
        rng = np.random.default_rng(derive_seed(self.seed, "client", self._check(k)))
        model = self._model(rng)
        return self._draw(int(self.sizes[k]), model, rng)

    def client(self, k: int) -> ClientDataset:
        """Client k's training set, generated when read."""
        return ClientDataset(self, self._check(k))

    def clients(self) -> ClientList:
        """Every client's training set as a sequence that makes each one when indexed."""
        return ClientList(self)

    def no_pool(self) -> ArrayDataset:
        """An empty dataset of the clients' sample shape and classes: a federated dataset
        has no pooled training set."""
        x = torch.zeros((0, self.dim), dtype=torch.float32)
        return ArrayDataset(x, torch.zeros(0, dtype=torch.int64), self.n_classes, NAME)

    def test_set(self) -> ArrayDataset:
        """Fresh samples of ``test_clients`` clients drawn at random from the population."""
        rng = np.random.default_rng(derive_seed(self.seed, "test_clients"))
        n = min(self.test_clients, self.n_clients)
        chosen = np.sort(rng.choice(self.n_clients, size=n, replace=False))
        xs, ys = [], []
        for k in chosen:
            model = self._model(np.random.default_rng(derive_seed(self.seed, "client", int(k))))
            test_rng = np.random.default_rng(derive_seed(self.seed, "client", int(k), "test"))
            x, y = self._draw(self.test_samples, model, test_rng)
            xs.append(x)
            ys.append(y)
        return ArrayDataset(torch.cat(xs), torch.cat(ys), self.n_classes, NAME)


class ClientDataset(ArrayDataset):
    """One client of a ``SyntheticFederation``: its samples are generated when ``x`` or
    ``y`` is read (a fresh tensor each time, always the same values), so a client that is
    never chosen costs nothing."""

    federation: SyntheticFederation
    client: int

    def __init__(self, federation: SyntheticFederation, client: int) -> None:
        for key, value in (
            ("federation", federation),
            ("client", client),
            ("n_classes", federation.n_classes),
            ("name", NAME),
            ("class_names", ()),
        ):
            object.__setattr__(self, key, value)

    @property
    def x(self) -> torch.Tensor:
        return self.federation.client_data(self.client)[0]

    @property
    def y(self) -> torch.Tensor:
        return self.federation.client_data(self.client)[1]

    def __len__(self) -> int:
        return int(self.federation.sizes[self.client])

    def __repr__(self) -> str:
        return f"ClientDataset({NAME!r}, client {self.client}, {len(self)} samples)"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.federation.dim,)

    @property
    def labels(self) -> np.ndarray:
        return self.y.numpy()


class ClientList(Sequence[ArrayDataset]):
    """The clients of a federation as a sequence; indexing makes the client's dataset."""

    def __init__(self, federation: SyntheticFederation) -> None:
        self.federation = federation

    def __len__(self) -> int:
        return self.federation.n_clients

    def __getitem__(self, k):  # type: ignore[no-untyped-def]
        if isinstance(k, slice):
            return [self.federation.client(i) for i in range(*k.indices(len(self)))]
        return self.federation.client(k)

    def __iter__(self) -> Iterator[ArrayDataset]:
        return (self.federation.client(k) for k in range(len(self)))


def load_leaf_synthetic(
    n_clients: int = 30,
    alpha: float = 1.0,
    beta: float = 1.0,
    seed: int = 0,
    max_samples: int = 0,
    test_clients: int = 30,
    test_samples: int = 20,
) -> tuple[ArrayDataset, ArrayDataset]:
    """(pooled training set of every client, shared test set) of a small population, for
    the API; a federated run builds its clients on demand instead."""
    fed = SyntheticFederation(
        n_clients, alpha, beta, seed, max_samples=max_samples,
        test_clients=test_clients, test_samples=test_samples,
    )  # fmt: skip
    pairs = [fed.client_data(k) for k in range(n_clients)]
    train = ArrayDataset(
        torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs]), fed.n_classes, NAME
    )
    return train, fed.test_set()


class ClientParts(Sequence[np.ndarray]):
    """Each client's sample indices into its own data (``arange(n_k)``; empty with
    ``empty``), made when indexed: the partition of a federated dataset."""

    def __init__(self, federation: SyntheticFederation, empty: bool = False) -> None:
        self.federation = federation
        self.empty = empty

    def __len__(self) -> int:
        return self.federation.n_clients

    def __getitem__(self, k):  # type: ignore[no-untyped-def]
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        n = 0 if self.empty else int(self.federation.sizes[k])
        return np.arange(n, dtype=np.int64)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[k] for k in range(len(self)))

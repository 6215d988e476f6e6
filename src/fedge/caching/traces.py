"""Request traces: a synthetic generator and loaders for MovieLens-format ratings and plain
request CSVs. A trace is arrays (time, user, item) sorted by time plus the catalogue's item
feature vectors; nothing is downloaded.

Synthetic model. Items carry nonnegative genre vectors (Dirichlet(0.3) over ``genres``
dimensions). Popularity is Zipf: the item at rank r has weight r^-alpha, ranks a random
permutation of the catalogue. User u has a taste vector t_u (Dirichlet(0.5)); a request is
drawn from the global Zipf law with probability 1 - taste_weight, else from the user's taste
law ∝ zipf_i · exp(taste_sharpness · cos(t_u, f_i)). Requests arrive as a Poisson process
(``rate_per_s``), the user uniform over the devices. Drift: the time is cut into ``periods``;
at each boundary a share ``drift`` of the items swap ranks among themselves, and the
``new_items`` share of the catalogue, held back at the start, arrives in equal batches that
take the top ranks (pushing the others down).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedge.core.errors import FedgeError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class Trace:
    """Requests sorted by time: ``time_s``, ``user`` (0..users-1), ``item`` (0..M-1), and
    ``features`` (M x F, one row per item)."""

    time_s: FloatArray
    user: IntArray
    item: IntArray
    features: FloatArray

    @property
    def items(self) -> int:
        return int(self.features.shape[0])

    def __len__(self) -> int:
        return int(self.time_s.shape[0])


def zipf_weights(n: int, alpha: float) -> FloatArray:
    """Normalised weights r^-alpha of ranks 1..n."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    out: FloatArray = w / w.sum()
    return out


def _draw(cdf: FloatArray, u: FloatArray) -> IntArray:
    idx: IntArray = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1)
    return idx


def _period_ranks(
    items: int, periods: int, drift: float, new_items: float, rng: np.random.Generator
) -> list[tuple[IntArray, NDArray[np.bool_]]]:
    """Per period: each item's rank and which items exist yet."""
    order = rng.permutation(items)  # order[r] = the item at rank r
    n_new = round(new_items * items)
    pending = list(order[items - n_new :]) if n_new else []
    live_order = list(order[: items - n_new])
    out = []
    batch = -(-n_new // max(periods - 1, 1)) if n_new else 0
    for p in range(periods):
        if p > 0:
            if drift > 0:
                moved = rng.choice(len(live_order), round(drift * len(live_order)), False)
                values = [live_order[i] for i in moved]
                for i, v in zip(moved, rng.permutation(values), strict=True):
                    live_order[i] = int(v)
            arrivals, pending = pending[:batch], pending[batch:]
            live_order = [int(a) for a in arrivals] + live_order
        rank = np.full(items, items, dtype=np.int64)
        rank[np.array(live_order, dtype=np.int64)] = np.arange(len(live_order))
        out.append((rank, rank < items))
    return out


def synthetic_trace(
    rng: np.random.Generator,
    *,
    requests: int,
    items: int,
    users: int,
    alpha: float,
    taste_weight: float = 0.0,
    taste_sharpness: float = 4.0,
    genres: int = 8,
    rate_per_s: float = 50.0,
    periods: int = 1,
    drift: float = 0.0,
    new_items: float = 0.0,
) -> Trace:
    """The synthetic trace of the module docstring, drawn from ``rng``."""
    features = rng.dirichlet(np.full(genres, 0.3), size=items)
    times = np.cumsum(rng.exponential(1.0 / rate_per_s, requests))
    user = rng.integers(0, users, requests)
    u = rng.random(requests)
    from_taste = rng.random(requests) < taste_weight
    taste = rng.dirichlet(np.full(genres, 0.5), size=users)
    cos = _unit(taste) @ _unit(features).T  # users x items
    zipf = zipf_weights(items, alpha)
    item = np.empty(requests, dtype=np.int64)
    bounds = np.linspace(0, requests, periods + 1).astype(np.int64)
    for p, (rank, live) in enumerate(_period_ranks(items, periods, drift, new_items, rng)):
        sl = slice(int(bounds[p]), int(bounds[p + 1]))
        weight = np.where(live, zipf[np.minimum(rank, items - 1)], 0.0)
        glob = ~from_taste[sl]
        idx = np.arange(sl.start, sl.stop)
        item[idx[glob]] = _draw(np.cumsum(weight), u[idx[glob]])
        tasted = idx[~glob]
        if len(tasted):
            law = weight[None, :] * np.exp(taste_sharpness * (cos - 1.0))
            for uid in np.unique(user[tasted]):
                mine = tasted[user[tasted] == uid]
                item[mine] = _draw(np.cumsum(law[uid]), u[mine])
    return Trace(times, user.astype(np.int64), item, features)


def _unit(x: FloatArray) -> FloatArray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    out: FloatArray = x / np.where(norm > 0, norm, 1.0)
    return out


def _rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line, row) of a CSV with a header holding ``columns`` (FedgeError naming the file
    and line otherwise)."""
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise FedgeError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise FedgeError(
                f"{path}:1: missing column {missing[0]!r}; the header needs " + ",".join(columns)
            )
        out = []
        for row in reader:
            line = reader.line_num
            if any(row.get(c) in (None, "") for c in columns):
                gap = next(c for c in columns if row.get(c) in (None, ""))
                raise FedgeError(f"{path}:{line}: missing value in column {gap!r}")
            out.append((line, row))
    return out


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FedgeError(f"{path}:{line}: {column} {text!r} is not a number") from None


def _index(values: list[str]) -> tuple[dict[str, int], IntArray]:
    ids: dict[str, int] = {}
    codes = np.array([ids.setdefault(v, len(ids)) for v in values], dtype=np.int64)
    return ids, codes


def _sorted(time_s: FloatArray, user: IntArray, item: IntArray, features: FloatArray) -> Trace:
    order = np.argsort(time_s, kind="stable")
    t = time_s[order] - (time_s.min() if len(time_s) else 0.0)
    return Trace(t, user[order], item[order], features)


def movielens_trace(ratings: str | Path, movies: str | Path, time_scale: float = 1.0) -> Trace:
    """Every rating is a request at ``timestamp · time_scale`` (shifted to start at 0); item
    features are the genre indicator vectors of ``movies`` (``item,title,genres``; an item
    without a genre line, or "(no genres listed)", has the zero vector)."""
    rpath, mpath = Path(ratings), Path(movies)
    rows = _rows(rpath, ("user", "item", "rating", "timestamp"))
    for line, row in rows:
        _number(rpath, line, "rating", row["rating"])
    times = np.array([_number(rpath, ln, "timestamp", r["timestamp"]) for ln, r in rows])
    _, users = _index([r["user"] for _, r in rows])
    item_ids, items = _index([r["item"] for _, r in rows])
    genre_rows = _rows(mpath, ("item", "genres"))
    names = sorted(
        {g for _, r in genre_rows for g in r["genres"].split("|")} - {"(no genres listed)"}
    )
    col = {g: k for k, g in enumerate(names)}
    features = np.zeros((len(item_ids), max(len(names), 1)))
    for _, row in genre_rows:
        k = item_ids.get(row["item"])
        if k is not None:
            for g in row["genres"].split("|"):
                if g in col:
                    features[k, col[g]] = 1.0
    return _sorted(times * time_scale, users, items, features)


def csv_trace(
    requests: str | Path, items: str | Path | None = None, time_scale: float = 1.0
) -> Trace:
    """A ``time_s,user,item`` trace; ``items`` (``item,<feature columns>``) gives feature
    vectors, else every item has a one-hot vector of its own (no two items similar)."""
    path = Path(requests)
    rows = _rows(path, ("time_s", "user", "item"))
    times = np.array([_number(path, ln, "time_s", r["time_s"]) for ln, r in rows])
    _, users = _index([r["user"] for _, r in rows])
    item_ids, codes = _index([r["item"] for _, r in rows])
    if items is None:
        return _sorted(times * time_scale, users, codes, np.eye(len(item_ids)))
    ipath = Path(items)
    feature_rows = _rows(ipath, ("item",))
    columns = [c for c in feature_rows[0][1] if c != "item"] if feature_rows else []
    features = np.zeros((len(item_ids), max(len(columns), 1)))
    for line, row in feature_rows:
        k = item_ids.get(row["item"])
        if k is not None:
            features[k] = [_number(ipath, line, c, row[c] or "") for c in columns]
    return _sorted(times * time_scale, users, codes, features)

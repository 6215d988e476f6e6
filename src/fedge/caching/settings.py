"""The ``[caching]`` section: the edge-caching study's settings (its trace, policy, soft
hits, system cost, recommender and FDRL agents), validated before any work."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from fedge.core.errors import ConfigError
from fedge.core.settings import Section

POLICY_NAMES = ("fifo", "lru", "lfu", "perfect_lfu", "belady", "fpcc", "rec_aware", "fdrl")


class TraceSettings(Section):
    """``[caching.trace]``: where the requests come from.

    ``synthetic``: Zipf popularity (exponent ``alpha``) mixed with per-user taste, with
    optional drift (popularity shifts and new items at every period boundary). ``movielens``:
    a ``user,item,rating,timestamp`` ratings file (each rating is one request at its
    timestamp) with the items' genres from ``items_path`` (``item,title,genres``, genres
    ``|``-separated, MovieLens' movies.csv). ``csv``: a ``time_s,user,item`` request trace
    (``items_path``, optional, gives ``item,f1,f2,...`` feature vectors).
    """

    section: ClassVar[str] = "caching.trace"

    kind: Literal["synthetic", "movielens", "csv"] = "synthetic"
    path: str | None = Field(None, description="movielens / csv: the requests file")
    items_path: str | None = Field(None, description="item genres / features file")
    time_scale: float = Field(
        1.0, gt=0, description="file traces: simulated seconds per unit of the timestamps"
    )
    requests: int = Field(20000, ge=1, description="synthetic: number of requests")
    items: int = Field(1000, ge=2, description="synthetic: catalogue size M")
    alpha: float = Field(0.8, ge=0, description="synthetic: Zipf exponent of popularity")
    taste_weight: float = Field(
        0.3, ge=0, le=1, description="synthetic: share of requests drawn from the user's taste"
    )
    taste_sharpness: float = Field(
        4.0, ge=0, description="synthetic: taste ∝ Zipf popularity · exp(sharpness · cos)"
    )
    genres: int = Field(8, ge=1, description="synthetic: feature dimensions (genres)")
    rate_per_s: float = Field(50.0, gt=0, description="synthetic: Poisson requests per second")
    periods: int = Field(1, ge=1, description="synthetic: drift periods (1: stationary)")
    drift: float = Field(
        0.0, ge=0, le=1, description="synthetic: share of items whose rank is reshuffled"
    )
    new_items: float = Field(
        0.0, ge=0, lt=1, description="synthetic: share of the catalogue arriving over time"
    )

    @model_validator(mode="after")
    def _files(self) -> TraceSettings:
        if self.kind != "synthetic" and self.path is None:
            raise ConfigError("caching.trace.path", None, f"a file path for kind={self.kind!r}")
        if self.kind == "movielens" and self.items_path is None:
            raise ConfigError(
                "caching.trace.items_path", None, "the items file (item,title,genres)"
            )
        return self


class RecommenderSettings(Section):
    """``[caching.recommender]``: the federated matrix-factorisation recommender."""

    section: ClassVar[str] = "caching.recommender"

    dim: int = Field(16, ge=1, description="embedding dimension")
    rounds: int = Field(10, ge=1, description="FedAvg rounds (devices -> edges -> cloud)")
    local_epochs: int = Field(5, ge=1, description="full-batch steps on a device's interactions")
    lr: float = Field(1.0, gt=0, description="local SGD learning rate (full-batch steps)")
    reg: float = Field(1e-4, ge=0, description="L2 regularisation")
    negatives: int = Field(4, ge=1, description="sampled negatives per positive")
    top_n: int = Field(50, ge=1, description="items each device reports to its edge")


class FdrlSettings(Section):
    """``[caching.fdrl]``: one DQN replacement agent per edge, federated averaging."""

    section: ClassVar[str] = "caching.fdrl"

    episodes: int = Field(6, ge=1, description="passes over the training requests")
    fed_every: int = Field(2, ge=1, description="average the agents every N episodes")
    hidden: int = Field(32, ge=1, description="hidden units of the Q-network")
    lr: float = Field(1e-3, gt=0)
    gamma: float = Field(0.9, ge=0, lt=1, description="discount between decisions")
    epsilon: float = Field(0.1, ge=0, le=1, description="exploration rate while training")
    batch: int = Field(64, ge=1)
    buffer: int = Field(5000, ge=1, description="replay buffer size per agent")
    target_every: int = Field(200, ge=1, description="steps between target-network syncs")


class CachingSettings(Section):
    """``[caching]`` of ``study = "caching"``.

    The cache size is ``capacity`` items, or ``capacity_fraction`` of the catalogue (not
    both; neither: 1% of the catalogue). A soft hit needs similarity ≥ ``theta`` and is
    accepted with probability exp(-``accept_decay`` · (1 - similarity)).
    """

    section: ClassVar[str] = "caching"

    policy: str = Field("lru", description=" | ".join(POLICY_NAMES) + ", or an import path")
    capacity: int | None = Field(None, ge=1, description="items per edge cache")
    capacity_fraction: float | None = Field(
        None, gt=0, le=1, description="cache size as a share of the catalogue"
    )
    theta: float = Field(0.8, description="similarity threshold of a soft hit, in [0, 1]")
    accept_decay: float = Field(
        5.0, ge=0, description="acceptance = exp(-accept_decay * (1 - similarity))"
    )
    rec_list: int = Field(10, ge=0, description="most similar items considered for a soft hit")
    item_bytes: int = Field(2_000_000, ge=1, description="bytes of every item")
    neighbour_fetch: bool = Field(
        True, description="a miss cached at a neighbour edge comes over the backhaul"
    )
    w_similarity: float = Field(1.0, ge=0, description="cost per unit of 1 - similarity")
    w_delay: float = Field(1.0, ge=0, description="cost per second of delay")
    w_miss: float = Field(1.0, ge=0, description="cost of a request the edge missed")
    windows: int = Field(10, ge=1, description="evaluation windows (one row each)")
    train_fraction: float = Field(
        0.2, ge=0, lt=1, description="first share of the time for warm-up and training"
    )
    refresh_s: float | None = Field(
        None,
        gt=0,
        description="fpcc / rec_aware: seconds between cache placements (None: once per window)",
    )
    trace: TraceSettings = TraceSettings()
    recommender: RecommenderSettings = RecommenderSettings()
    fdrl: FdrlSettings = FdrlSettings()

    @model_validator(mode="after")
    def _consistent(self) -> CachingSettings:
        if not 0.0 <= self.theta <= 1.0:
            raise ConfigError("caching.theta", self.theta, "a similarity in [0, 1]")
        if self.capacity is not None and self.capacity_fraction is not None:
            raise ConfigError(
                "caching.capacity_fraction",
                self.capacity_fraction,
                "unset when caching.capacity is set (one cache size, not two)",
            )
        from fedge.caching.catalog import find_policy

        find_policy(self.policy)
        if self.trace.kind == "synthetic" and self.capacity is not None:
            check_capacity(self.capacity, self.trace.items)
        return self

    def cache_size(self, items: int) -> int:
        """Items per cache for a catalogue of ``items`` (ConfigError if larger)."""
        if self.capacity is not None:
            return check_capacity(self.capacity, items)
        fraction = 0.01 if self.capacity_fraction is None else self.capacity_fraction
        return max(1, round(fraction * items))


def check_capacity(capacity: int, items: int) -> int:
    """``capacity`` if a cache of that size fits the catalogue, else ConfigError."""
    if capacity > items:
        raise ConfigError("caching.capacity", capacity, f"at most the catalogue size ({items})")
    return capacity

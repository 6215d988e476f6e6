"""The ``caching`` study: edge caches with recommendation on the system model (SPEC §7).

The edges of ``[system]`` each hold a cache of C items (``[caching]`` ``capacity`` or
``capacity_fraction``) over a catalogue of M items with feature vectors. The trace's users
are the devices (user u is device u mod D); each request goes to the edge its device is
attached to at that time (the system model's mobility and handovers), and is a direct hit,
a soft hit, a neighbour fetch or a cloud fetch (``fedge.caching.simulate``), priced in
delay and bytes by the system model and in system cost by the ``w_*`` weights.

Time. The first ``train_fraction`` of the trace's span warms every policy up (caches fill;
the federated recommender and the FDRL agents train on it); the rest is cut into
``windows`` equal spans, one row each, and the summary is over all of them. A row:
``requests``, ``direct_hit_ratio``, ``soft_hit_ratio``, ``neighbour_ratio`` (misses served
by a neighbour edge), ``miss_ratio`` (all misses), ``avg_cost``, ``avg_delay_s``,
``backhaul_bytes`` and ``wan_bytes`` (proactive placements' fetches included),
``belady_direct_hit_ratio`` (Belady with bypass on the same requests: the direct-hit limit)
and ``belady_gap`` (that minus the policy's). The FDRL policy also writes
``fdrl_curve.csv`` (one line per training episode).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from fedge.caching.catalog import Policy, find_policy
from fedge.caching.fdrl import Agent, fdrl_caches, federated_average, hit_ratio
from fedge.caching.policies import Belady, Cache, next_use
from fedge.caching.proactive import ProactiveCache, coverage_matrix, rec_aware_set, top_demand
from fedge.caching.recommender import FederatedMF
from fedge.caching.settings import CachingSettings
from fedge.caching.similarity import neighbours
from fedge.caching.simulate import (
    DIRECT,
    NEIGHBOUR,
    SOFT,
    CostWeights,
    Outcomes,
    Requests,
    SoftModel,
    attach_edges,
    deliver,
    serve,
    system_cost,
)
from fedge.caching.traces import Trace, csv_trace, movielens_trace, synthetic_trace
from fedge.core.node import derive_seed
from fedge.results import write_rows_csv
from fedge.runs.study import StudyContext, StudySpec, register_study

CURVE_FILE = "fdrl_curve.csv"


def load_trace(s: CachingSettings, ctx: StudyContext) -> Trace:
    """The configured trace (synthetic: one user per device, drawn from the study's rng)."""
    t = s.trace
    if t.kind == "movielens":
        assert t.path is not None and t.items_path is not None
        return movielens_trace(t.path, t.items_path, t.time_scale)
    if t.kind == "csv":
        assert t.path is not None
        return csv_trace(t.path, t.items_path, t.time_scale)
    return synthetic_trace(
        ctx.rng,
        requests=t.requests,
        items=t.items,
        users=len(ctx.system.ids("device")),
        alpha=t.alpha,
        taste_weight=t.taste_weight,
        taste_sharpness=t.taste_sharpness,
        genres=t.genres,
        rate_per_s=t.rate_per_s,
        periods=t.periods,
        drift=t.drift,
        new_items=t.new_items,
    )


class Setup:
    """Everything a policy run needs: requests, soft model, neighbours, spans."""

    def __init__(self, ctx: StudyContext) -> None:
        s: CachingSettings = ctx.settings
        self.ctx, self.s = ctx, s
        self.trace = load_trace(s, ctx)
        self.items = self.trace.items
        self.capacity = s.cache_size(self.items)
        system = ctx.system
        self.edge_ids = system.ids("edge")
        device = self.trace.user % len(system.ids("device"))
        edge = attach_edges(system, device, self.trace.time_s)
        self.req = Requests(self.trace.time_s, device, edge, self.trace.item)
        n = len(self.req)
        self.nbrs = neighbours(self.trace.features, s.theta, s.rec_list)
        self.soft = SoftModel(self.nbrs, s.accept_decay, ctx.rng.random(n)) if s.rec_list else None
        index = {e: j for j, e in enumerate(self.edge_ids)}
        self.edge_nbrs = (
            [[index[m] for m in system.neighbors(e)] for e in self.edge_ids]
            if s.neighbour_fetch
            else None
        )
        t_end = float(self.trace.time_s[-1]) if n else 0.0
        self.times = np.linspace(s.train_fraction * t_end, t_end, s.windows + 1)
        cuts = np.searchsorted(self.trace.time_s, self.times, side="left")
        cuts[-1] = n
        self.cuts = cuts
        self.next_use = next_use(edge, self.trace.item)

    def caches(self, policy: Policy) -> list[Cache]:
        assert policy.factory is not None
        return [policy.factory(self.capacity, self.next_use) for _ in self.edge_ids]


def _reactive(setup: Setup, policy: Policy, out: Outcomes) -> np.ndarray:
    serve(setup.req, setup.caches(policy), out, (0, len(setup.req)), setup.soft, setup.edge_nbrs)
    return np.zeros(setup.s.windows)


def _device_interactions(setup: Setup, lo: int, hi: int) -> dict[int, np.ndarray]:
    dev, item = setup.req.device[lo:hi], setup.req.item[lo:hi]
    return {int(d): item[dev == d] for d in np.unique(dev)}


def _edge_of_devices(setup: Setup, t_s: float) -> dict[int, int]:
    system = setup.ctx.system
    index = {e: j for j, e in enumerate(setup.edge_ids)}
    return {d: index[system.attachment(dev, t_s)] for d, dev in enumerate(system.ids("device"))}


def _proactive(setup: Setup, policy: Policy, out: Outcomes) -> np.ndarray:
    """Train the federated recommender on the warm-up span, then place every window (or
    every ``refresh_s``) from the attached devices' reports, one online round after each."""
    s, ctx = setup.s, setup.ctx
    r = s.recommender
    mf = FederatedMF(
        setup.items,
        r.dim,
        derive_seed(ctx.config.seed, "caching", "recommender"),
        lr=r.lr,
        reg=r.reg,
        negatives=r.negatives,
        local_epochs=r.local_epochs,
    )
    start = int(setup.cuts[0])
    caches = [ProactiveCache(setup.capacity) for _ in setup.edge_ids]
    serve(setup.req, caches, out, (0, start), setup.soft, setup.edge_nbrs)
    seen = _device_interactions(setup, 0, start)
    for _ in range(r.rounds):
        mf.round(seen, _edge_of_devices(setup, setup.times[0]))
    cover = coverage_matrix(setup.nbrs, s.accept_decay) if policy.kind == "rec_aware" else None
    times = _refresh_times(setup)
    cuts = np.searchsorted(setup.req.time_s, times, side="left")
    cuts[-1] = len(setup.req)
    prefetch = np.zeros(s.windows)
    for a, (lo, hi) in enumerate(itertools.pairwise(cuts)):
        edge_of = _edge_of_devices(setup, float(times[a]))
        activity = {d: float(len(x)) for d, x in seen.items()}
        window = min(int(np.searchsorted(setup.times, times[a], side="right")) - 1, s.windows - 1)
        for e, cache in enumerate(caches):
            devs = [d for d, j in edge_of.items() if j == e and d in activity]
            demand = mf.edge_demand(devs, [activity[d] for d in devs], r.top_n)
            chosen = (
                top_demand(demand, setup.capacity)
                if cover is None
                else rec_aware_set(demand, cover, setup.capacity)
            )
            prefetch[window] += cache.place(chosen) * s.item_bytes
        serve(setup.req, caches, out, (int(lo), int(hi)), setup.soft, setup.edge_nbrs)
        seen = _device_interactions(setup, int(lo), int(hi))
        mf.round(seen, edge_of)
    return prefetch


def _refresh_times(setup: Setup) -> np.ndarray:
    s = setup.s
    if s.refresh_s is None:
        return setup.times
    t0, t1 = float(setup.times[0]), float(setup.times[-1])
    return np.append(np.arange(t0, t1, s.refresh_s), t1)


def _fdrl(setup: Setup, policy: Policy, out: Outcomes) -> np.ndarray:
    """Train the agents on the warm-up span for ``episodes`` passes (federated averaging
    every ``fed_every``), write the learning curve, then run them greedily on the whole
    trace."""
    s, ctx = setup.s, setup.ctx
    agents = [
        Agent(s.fdrl, derive_seed(ctx.config.seed, "caching", "fdrl", e))
        for e in range(len(setup.edge_ids))
    ]
    start = int(setup.cuts[0])
    curve: list[dict[str, Any]] = []
    scratch = Outcomes.empty(len(setup.req))
    for episode in range(1, s.fdrl.episodes + 1):
        caches = fdrl_caches(agents, setup.capacity, setup.items, training=True)
        serve(setup.req, caches, scratch, (0, start), setup.soft, setup.edge_nbrs)
        averaged = episode % s.fdrl.fed_every == 0
        if averaged:
            federated_average(agents)
        curve.append(
            {
                "episode": episode,
                "direct_hit_ratio": hit_ratio(caches),
                "soft_hit_ratio": float(np.mean(scratch.kind[:start] == SOFT)) if start else 0.0,
                "decisions": sum(a.decisions for a in agents),
                "federated_round": int(averaged),
            }
        )
    write_rows_csv(curve, ctx.run_dir / CURVE_FILE)
    caches = fdrl_caches(agents, setup.capacity, setup.items, training=False)
    serve(setup.req, caches, out, (0, len(setup.req)), setup.soft, setup.edge_nbrs)
    return np.zeros(s.windows)


RUNNERS = {"reactive": _reactive, "fpcc": _proactive, "rec_aware": _proactive, "fdrl": _fdrl}


def _belady_direct(setup: Setup) -> np.ndarray:
    """Per request, whether Belady (with bypass) hits directly: the direct-hit limit."""
    ref = Outcomes.empty(len(setup.req))
    caches: list[Cache] = [Belady(setup.capacity, setup.next_use) for _ in setup.edge_ids]
    serve(setup.req, caches, ref, (0, len(setup.req)))
    hits: np.ndarray = ref.kind == DIRECT
    return hits


def _stats(
    out: Outcomes, cost: np.ndarray, delay: np.ndarray, belady: np.ndarray, sl: slice
) -> dict[str, float]:
    kind = out.kind[sl]
    n = max(len(kind), 1)
    direct = float(np.sum(kind == DIRECT)) / n
    bel = float(np.sum(belady[sl])) / n
    return {
        "requests": float(len(kind)),
        "direct_hit_ratio": direct,
        "soft_hit_ratio": float(np.sum(kind == SOFT)) / n,
        "neighbour_ratio": float(np.sum(kind == NEIGHBOUR)) / n,
        "miss_ratio": float(np.sum(kind >= NEIGHBOUR)) / n,
        "avg_cost": float(cost[sl].sum()) / n,
        "avg_delay_s": float(delay[sl].sum()) / n,
        "belady_direct_hit_ratio": bel,
        "belady_gap": bel - direct,
    }


def run(ctx: StudyContext) -> Iterator[dict[str, float]]:
    """One row per evaluation window; the summary holds the same figures over all windows
    (see the module docstring)."""
    s: CachingSettings = ctx.settings
    setup = Setup(ctx)
    policy = find_policy(s.policy)
    out = Outcomes.empty(len(setup.req))
    prefetch = RUNNERS[policy.kind](setup, policy, out)
    belady = _belady_direct(setup)
    delivery = deliver(ctx.system, setup.req, out, s.item_bytes)
    weights = CostWeights(s.w_similarity, s.w_delay, s.w_miss)
    cost = system_cost(out, delivery, weights)
    cuts = setup.cuts
    for w in range(s.windows):
        sl = slice(int(cuts[w]), int(cuts[w + 1]))
        row = _stats(out, cost, delivery.delay_s, belady, sl)
        row["backhaul_bytes"] = float(delivery.backhaul_bytes[sl].sum())
        row["wan_bytes"] = float(delivery.wan_bytes[sl].sum() + prefetch[w])
        ctx.clock.advance_to(float(setup.times[w + 1]))
        yield row
    whole = slice(int(cuts[0]), int(cuts[-1]))
    ctx.summary.update(_stats(out, cost, delivery.delay_s, belady, whole))
    ctx.summary.update(
        {
            "backhaul_bytes": float(delivery.backhaul_bytes[whole].sum()),
            "wan_bytes": float(delivery.wan_bytes[whole].sum() + prefetch.sum()),
            "capacity": float(setup.capacity),
            "items": float(setup.items),
        }
    )


CACHING = register_study(
    StudySpec(
        "caching",
        "edge caches with soft hits and recommendation (classical, FPCC, rec-aware, FDRL)",
        CachingSettings,
        run,
        summed=("requests", "backhaul_bytes", "wan_bytes"),
        sweep_metrics=("direct_hit_ratio", "soft_hit_ratio", "avg_cost"),
        section="caching",
    )
)

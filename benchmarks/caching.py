"""Throughput of the classical caching policies: N requests (default 10 million) over a
catalogue of M items (default 100,000), Zipf(alpha) popularity, one edge cache of
``--capacity-fraction`` of the catalogue, served through ``fedge.caching.simulate.serve``
(the study's own loop: per request a direct-hit look-up, admission on a miss) on one core.
Prints the trace generation time, then per policy the wall time, requests per second and
direct-hit ratio; ``--reference`` also times libCacheSim on the same requests (a
per-request loop from Python, as fedge uses it in its tests) and checks the hit ratios are
equal (fedge's Belady is run without bypass for that comparison).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/caching.py [--requests 10000000]
        [--items 100000] [--alpha 0.8] [--capacity-fraction 0.01]
        [--policies fifo lru lfu perfect_lfu belady] [--reference] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fedge.caching.catalog import find_policy
from fedge.caching.policies import Belady, next_use
from fedge.caching.reference import libcachesim_hits
from fedge.caching.simulate import DIRECT, Outcomes, Requests, serve
from fedge.caching.traces import synthetic_trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--capacity-fraction", type=float, default=0.01)
    ap.add_argument(
        "--policies", nargs="+", default=["fifo", "lru", "lfu", "perfect_lfu", "belady"]
    )
    ap.add_argument("--reference", action="store_true", help="also time libCacheSim")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    trace = synthetic_trace(
        np.random.default_rng(0),
        requests=args.requests,
        items=args.items,
        users=1,
        alpha=args.alpha,
        genres=2,
    )
    gen_s = time.perf_counter() - t0
    zeros = np.zeros(len(trace), dtype=np.int64)
    req = Requests(trace.time_s, zeros, zeros, trace.item)
    capacity = max(1, round(args.capacity_fraction * args.items))
    t0 = time.perf_counter()
    nxt = next_use(zeros, trace.item)
    next_s = time.perf_counter() - t0
    results = []
    print(
        f"trace: {len(trace):,} requests over {args.items:,} items drawn in {gen_s:.1f} s; "
        f"capacity {capacity}; next-use index {next_s:.1f} s"
    )
    for name in args.policies:
        factory = find_policy(name).factory
        assert factory is not None
        out = Outcomes.empty(len(req))
        t0 = time.perf_counter()
        serve(req, [factory(capacity, nxt)], out, (0, len(req)))
        wall = time.perf_counter() - t0
        hits = out.kind == DIRECT
        row = {
            "policy": name,
            "wall_s": wall,
            "requests_per_s": len(req) / wall,
            "direct_hit_ratio": float(hits.mean()),
        }
        if args.reference and name in ("fifo", "lru", "lfu", "belady"):
            if name == "belady":
                plain = Outcomes.empty(len(req))
                serve(req, [Belady(capacity, nxt, bypass=False)], plain, (0, len(req)))
                hits = plain.kind == DIRECT
            t0 = time.perf_counter()
            ref = libcachesim_hits(name, trace.item, capacity)
            row["libcachesim_wall_s"] = time.perf_counter() - t0
            row["libcachesim_hit_ratio"] = float(ref.mean())
            row["equal_per_request"] = bool(np.array_equal(ref, hits))
        results.append(row)
        print(
            json.dumps(row)
            if args.json
            else "  ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )


if __name__ == "__main__":
    main()

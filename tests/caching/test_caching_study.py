"""The caching study end to end: a hand-computed five-request trace, soft hits, θ = 1,
handovers, every policy under the study, and bad input."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedge.caching.policies import LRU
from fedge.caching.similarity import neighbours
from fedge.caching.simulate import SOFT, Outcomes, Requests, SoftModel, attach_edges, serve
from fedge.caching.traces import synthetic_trace
from fedge.core.errors import ConfigError, FedgeError
from fedge.experiment.config import load_config, parse_config
from fedge.experiment.systems import build_system
from fedge.runs import run_experiment
from fedge.runs.study import check_study

ROOT = Path(__file__).parents[2]
POLICIES = ("fifo", "lru", "lfu", "perfect_lfu", "belady", "fpcc", "rec_aware", "fdrl")
SMALL = """
name = "cache"
seed = 1
study = "caching"

[caching]
policy = "lru"
capacity = 8
theta = 0.8
windows = 3
train_fraction = 0.3

[caching.trace]
requests = 3000
items = 200
rate_per_s = 40.0

[caching.recommender]
rounds = 2

[caching.fdrl]
episodes = 2
fed_every = 1
batch = 16

[system]
edges = 3
devices = 9
"""


def write(tmp_path: Path, body: str = SMALL) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    runs = tmp_path / "runs"
    path = tmp_path / "cache.toml"
    out = f'[output]\nplots = false\nprogress = false\ndir = "{runs.as_posix()}"\n'
    path.write_text(body + out + f'store = "{(runs / "s.sqlite").as_posix()}"\n')
    return path


def run(tmp_path, *overrides, body=SMALL):
    return run_experiment(load_config(write(tmp_path, body), list(overrides)), progress=False)


HAND_TOPOLOGY = """
[wan]
bandwidth_bps = 1e8
latency_s = 0.05
[backhaul]
bandwidth_bps = 1e9
latency_s = 0.005
[wireless]
bandwidth_hz = 1e6
edge_tx_power_w = 1.0
[[edges]]
x_m = 0.0
y_m = 0.0
coverage_m = 600.0
neighbors = ["edge1"]
[[edges]]
x_m = 1000.0
y_m = 0.0
coverage_m = 600.0
[[devices]]
x_m = 100.0
y_m = 0.0
[[devices]]
x_m = 1100.0
y_m = 0.0
"""


def test_system_cost_of_a_five_request_trace_equals_the_hand_computation(tmp_path):
    (tmp_path / "topo.toml").write_text(HAND_TOPOLOGY)
    (tmp_path / "items.csv").write_text("item,f1,f2\na,1,0\nb,0.8,0.6\nc,0,1\n")
    (tmp_path / "req.csv").write_text("time_s,user,item\n1,u0,a\n2,u0,a\n3,u0,b\n4,u1,a\n5,u1,c\n")
    body = f"""
name = "hand"
study = "caching"
[caching]
policy = "lru"
capacity = 1
theta = 0.7
accept_decay = 0.0
item_bytes = 1000000
w_similarity = 2.0
w_delay = 3.0
w_miss = 5.0
windows = 1
train_fraction = 0.0
[caching.trace]
kind = "csv"
path = "{(tmp_path / "req.csv").as_posix()}"
items_path = "{(tmp_path / "items.csv").as_posix()}"
[system]
topology = "file"
topology_file = "{(tmp_path / "topo.toml").as_posix()}"
"""
    result = run(tmp_path, body=body)
    # wireless: 100 m from the edge, 3GPP UMa PL = 128.1 + 37.6 log10(0.1 km) = 90.5 dB
    snr = 1.0 * 10 ** (-9.05) / (10 ** (-17.4) / 1000 * 1e6)
    air = 8e6 / (1e6 * math.log2(1 + snr))
    wan, backhaul = 8e6 / 1e8 + 0.05, 8e6 / 1e9 + 0.005
    # a: cloud miss; a: direct; b: soft hit on a (cos 0.8 >= 0.7, accepted with prob 1);
    # u1's a: edge1 misses, neighbour edge0 has it; c: edge1 holds a (cos 0), edge0 a: cloud
    delays = [wan + air, air, air, backhaul + air, wan + air]
    costs = [5 + 3 * delays[0], 3 * air, 2 * 0.2 + 3 * air, 5 + 3 * delays[3], 5 + 3 * delays[4]]
    s = result.summary
    assert s["avg_cost"] == pytest.approx(sum(costs) / 5, rel=1e-9)
    assert s["avg_delay_s"] == pytest.approx(sum(delays) / 5, rel=1e-9)
    assert (s["direct_hit_ratio"], s["soft_hit_ratio"], s["neighbour_ratio"]) == (0.2, 0.2, 0.2)
    assert s["wan_bytes"] == 2e6 and s["backhaul_bytes"] == 1e6


class Recording(LRU):
    """LRU that remembers its content before every request."""

    def __init__(self, capacity, log, edge):
        super().__init__(capacity)
        self.log, self.edge = log, edge

    def lookup(self, item, k):
        self.log[k] = (self.edge, set(self))
        return super().lookup(item, k)


def test_a_soft_hit_serves_a_cached_item_with_similarity_at_least_theta():
    rng = np.random.default_rng(0)
    trace = synthetic_trace(rng, requests=4000, items=150, users=6, alpha=0.8, genres=3)
    theta = 0.85
    req = Requests(trace.time_s, trace.user, trace.user % 2, trace.item)
    log = {}
    caches = [Recording(6, log, e) for e in range(2)]
    out = Outcomes.empty(len(req))
    soft = SoftModel(neighbours(trace.features, theta, 10), 3.0, rng.random(len(req)))
    serve(req, caches, out, (0, len(req)), soft)
    unit = trace.features / np.linalg.norm(trace.features, axis=1, keepdims=True)
    soft_k = np.flatnonzero(out.kind == SOFT)
    assert len(soft_k) > 50
    for k in soft_k:
        i, j = int(req.item[k]), int(out.substitute[k])
        assert j != i and j in log[k][1] and i not in log[k][1]
        assert float(unit[i] @ unit[j]) >= theta - 1e-12
        assert out.similarity[k] == pytest.approx(float(unit[i] @ unit[j]))


def test_theta_one_gives_no_soft_hits_and_lower_theta_some(tmp_path):
    low = run(tmp_path / "a", "caching.theta=0.6").summary
    one = run(tmp_path / "b", "caching.theta=1.0").summary
    assert low["soft_hit_ratio"] > 0.01 and one["soft_hit_ratio"] == 0.0


def test_a_moving_user_requests_from_its_new_edge_from_the_handover_on(tmp_path):
    cfg = load_config(
        write(tmp_path), ["system.mobility='highway'", "system.out_of_coverage='nearest'"]
    )
    system = build_system(cfg.system, cfg.seed)
    devices = np.repeat(np.arange(9), 40)
    times = np.tile(np.linspace(0.0, 60.0, 40), 9)
    order = np.argsort(times, kind="stable")
    devices, times = devices[order], times[order]
    got = attach_edges(system, devices, times)
    ids = system.ids("edge")
    dev_ids = system.ids("device")
    pairs = zip(devices, times, strict=True)
    expected = [ids.index(system.attachment(dev_ids[d], t)) for d, t in pairs]
    assert got.tolist() == expected
    events = system.handovers(0.0, 60.0)
    assert events
    ev = events[0]
    d = dev_ids.index(ev.device)
    # the system model locates a handover to within 1 µs
    at = attach_edges(system, np.array([d, d]), np.array([ev.time_s - 2e-6, ev.time_s + 2e-6]))
    assert [ids[j] for j in at] == [ev.from_edge, ev.to_edge]


@pytest.mark.slow
def test_every_policy_runs_and_belady_has_the_most_direct_hits(tmp_path):
    summaries = {p: run(tmp_path / p, f"caching.policy='{p}'").summary for p in POLICIES}
    best = summaries["lru"]["belady_direct_hit_ratio"]
    for p, s in summaries.items():
        assert s["belady_direct_hit_ratio"] == pytest.approx(best)
        assert s["direct_hit_ratio"] <= best + 1e-12, p
        assert s["steps"] == 3 and s["requests"] > 0
        for key in (
            "soft_hit_ratio",
            "avg_cost",
            "avg_delay_s",
            "backhaul_bytes",
            "wan_bytes",
            "belady_gap",
        ):
            assert np.isfinite(s[key])
    assert (tmp_path / "fdrl").exists()
    # without soft hits the belady policy is the reference itself
    plain = {
        p: run(tmp_path / f"{p}1", f"caching.policy='{p}'", "caching.theta=1.0").summary
        for p in POLICIES[:5]
    }
    assert plain["belady"]["direct_hit_ratio"] == pytest.approx(best)
    assert all(plain["belady"]["direct_hit_ratio"] >= s["direct_hit_ratio"] for s in plain.values())


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("caching.capacity=500", "caching.capacity"),
        ("caching.theta=1.5", "caching.theta"),
        ("caching.theta=-0.1", "caching.theta"),
        ("caching.policy='mru'", "caching.policy"),
        ("caching.capacity_fraction=0.1", "caching.capacity_fraction"),
        ("caching.trace.kind='csv'", "caching.trace.path"),
        ("study='scheduling'", "caching"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, override, field):
    with pytest.raises(ConfigError) as info:
        check_study(load_config(write(tmp_path), [override]))
    assert info.value.field == field


def test_a_caching_table_without_the_caching_study_is_refused():
    with pytest.raises(ConfigError) as info:
        parse_config({"caching": {"policy": "lru"}})
    assert info.value.field == "caching"


def test_a_trace_with_a_missing_column_names_the_file_and_line(tmp_path):
    (tmp_path / "req.csv").write_text("time_s,user\n1,u0\n")
    path = (tmp_path / "req.csv").as_posix()
    over = ["caching.trace.kind='csv'", f"caching.trace.path='{path}'"]
    with pytest.raises(FedgeError, match=r"req\.csv:1: missing column 'item'"):
        run(tmp_path, *over)
    (tmp_path / "req.csv").write_text("time_s,user,item\n1,u0,a\n2,u1\n")
    with pytest.raises(FedgeError, match=r"req\.csv:3: missing value in column 'item'"):
        run(tmp_path, *over)


@pytest.mark.slow
def test_the_cli_exits_2_naming_the_field(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "fedge.cli",
        "run",
        str(write(tmp_path)),
        "--set",
        "caching.theta=2",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "caching.theta" in done.stderr and "Traceback" not in done.stderr


def test_the_example_configs_are_valid():
    for path in sorted((ROOT / "examples" / "caching").glob("*.toml")):
        spec, settings = check_study(load_config(path))
        assert spec.name == "caching" and settings.policy in POLICIES


@pytest.mark.slow
def test_compare_varies_policy_and_cache_size_and_plots_hit_ratio_against_size(tmp_path):
    from fedge.studies.compare import plot_sweeps, run_comparison

    body = SMALL.replace("capacity = 8\n", "").replace("requests = 3000", "requests = 1500")
    path = write(tmp_path, body).as_posix()
    out = tmp_path / "cmp"
    varies = ["caching.policy=lru,belady", "caching.capacity_fraction=0.02,0.1"]
    result = run_comparison(path, varies, 1, out=out, progress=False)
    by = {tuple(r.variant.values.values()): r.metrics for r in result.results}
    assert set(by) == {("lru", 0.02), ("lru", 0.1), ("belady", 0.02), ("belady", 0.1)}
    for policy in ("lru", "belady"):
        small, large = by[policy, 0.02], by[policy, 0.1]
        assert large["direct_hit_ratio"].mean > small["direct_hit_ratio"].mean
    images = plot_sweeps(result.results, ["direct_hit_ratio"], tmp_path / "plots")
    names = [p.name for p in images]
    assert names == ["direct_hit_ratio_vs_caching.capacity_fraction.png"]
    assert images[0].stat().st_size > 1000


def test_the_study_runs_on_a_movielens_format_trace(tmp_path):
    rng = np.random.default_rng(0)
    genres = ["Action", "Comedy", "Drama", "Horror"]
    movies = ["item,title,genres"] + [
        f"{m},Movie {m},{'|'.join(rng.choice(genres, rng.integers(1, 3), replace=False))}"
        for m in range(40)
    ]
    ratings = ["user,item,rating,timestamp"] + [
        f"{rng.integers(0, 12)},{min(int(rng.zipf(1.5)), 40) - 1},4.0,{1_000_000 + 60 * k}"
        for k in range(600)
    ]
    (tmp_path / "movies.csv").write_text("\n".join(movies) + "\n")
    (tmp_path / "ratings.csv").write_text("\n".join(ratings) + "\n")
    over = [
        "caching.trace.kind='movielens'",
        f"caching.trace.path='{(tmp_path / 'ratings.csv').as_posix()}'",
        f"caching.trace.items_path='{(tmp_path / 'movies.csv').as_posix()}'",
        "caching.trace.time_scale=0.01",
        "caching.capacity=4",
        "caching.theta=0.99",
    ]
    s = run(tmp_path, *over).summary
    assert s["items"] <= 40 and s["direct_hit_ratio"] > 0.1
    assert s["soft_hit_ratio"] > 0  # identical genre vectors have similarity 1


def test_fedge_list_names_every_policy(capsys):
    from fedge.cli import main

    assert main(["list", "caching-policies"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    listed = [line.split()[0] for line in lines if line.startswith("  ")]
    assert sorted(listed) == sorted(POLICIES)

"""TMOA: the chosen cut is feasible, equals brute force, and infeasibility is explained."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.core import ConfigError
from fedge.orchestration.split_point import (
    EdgePool,
    Layer,
    Workload,
    brute_force_cut,
    choose_cut,
    cut_costs,
    evaluate_cut,
    waiting_time_s,
)


def random_model(rng: np.random.Generator, n: int) -> list[Layer]:
    return [
        Layer(
            f"b{i}",
            float(rng.uniform(1e6, 5e9)),
            float(rng.uniform(0, 5e7)),
            float(rng.uniform(1e3, 5e6)),
        )
        for i in range(n)
    ]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 12),
    nodes=st.integers(1, 30),
    objective=st.sampled_from(["latest", "latency", "energy"]),
    queue=st.sampled_from(["mm1", "mmn"]),
)
def test_the_cut_is_feasible_and_equals_brute_force(seed, n, nodes, objective, queue):
    rng = np.random.default_rng(seed)
    layers = random_model(rng, n)
    pool = EdgePool(
        nodes=nodes,
        flops=float(rng.uniform(1e10, 1e12)),
        memory_bytes=float(rng.uniform(1e7, 3e8)),
        wan_bps=float(rng.uniform(1e6, 1e8)),
    )
    work = Workload(
        arrival_rate=float(rng.uniform(1, 50)),
        max_latency_s=float(rng.uniform(0.05, 3)),
        max_power_w=float(rng.uniform(1, 100)),
        queue=queue,
    )
    choice = choose_cut(layers, pool, work, objective)
    assert choice.cut == brute_force_cut(layers, pool, work, objective)
    if choice.cut is not None:
        memory, latency, _, power = evaluate_cut(layers, pool, work, choice.cut)
        assert memory <= 0.8 * pool.memory_bytes
        assert latency <= work.max_latency_s
        assert power <= work.max_power_w
    else:
        assert choice.failing


def test_vectorised_costs_match_the_term_by_term_ones():
    layers = random_model(np.random.default_rng(1), 6)
    pool, work = EdgePool(nodes=4), Workload(arrival_rate=5)
    costs = cut_costs(layers, pool, work)
    for j in range(len(layers) + 1):
        memory, latency, energy, power = evaluate_cut(layers, pool, work, j)
        assert costs.memory_bytes[j] == pytest.approx(memory)
        assert costs.latency_s[j] == pytest.approx(latency)
        assert costs.energy_j[j] == pytest.approx(energy)
        assert costs.power_w[j] == pytest.approx(power)


def test_infeasible_requests_name_the_failing_constraint():
    layers = [Layer("a", 1e9, 4e8, 1e6), Layer("b", 1e9, 4e8, 1e3)]
    # the cloud-only cut needs no edge memory, so memory alone never fails; make latency fail
    choice = choose_cut(layers, EdgePool(), Workload(max_latency_s=1e-6))
    assert choice.cut is None and choice.failing == ("latency",)
    tight = Workload(max_power_w=1e-9)
    assert choose_cut(layers, EdgePool(), tight).failing == ("energy",)


def test_more_edges_move_the_latest_cut_later():
    layers = [Layer(f"b{i}", 2e9, 1e6, 1e5) for i in range(10)]
    work = Workload(arrival_rate=40, max_latency_s=2.0, max_power_w=1e3)
    cuts = [choose_cut(layers, EdgePool(nodes=x, flops=2e10), work).cut for x in (10, 20, 30)]
    assert cuts[0] is not None
    assert cuts == sorted(cuts) and cuts[0] < cuts[-1]


def test_waiting_times_follow_the_queueing_formulas():
    # M/M/1: λ/(μ(μ−λ)) with λ = 2/s per server, μ = 4/s
    assert waiting_time_s(0.25, 4.0, 2, "mm1") == pytest.approx(2 / (4 * 2))
    # M/M/1 and M/M/N agree for one server
    assert waiting_time_s(0.25, 2.0, 1, "mmn") == pytest.approx(waiting_time_s(0.25, 2.0, 1, "mm1"))
    # M/M/2, λ = 2, μ = 1.5: Erlang C = 0.4571..., W_q = C / (2μ − λ)
    load, c = 2 / 1.5, None
    b = 1.0
    for k in (1, 2):
        b = load * b / (k + load * b)
    rho = load / 2
    c = b / (1 - rho + rho * b)
    assert waiting_time_s(1 / 1.5, 2.0, 2, "mmn") == pytest.approx(c / (3 - 2))
    assert math.isinf(waiting_time_s(1.0, 5.0, 2, "mmn"))
    assert waiting_time_s(0.0, 5.0, 2, "mm1") == 0.0


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="queue"):
        Workload(queue="mg1")
    with pytest.raises(ConfigError, match="edges"):
        EdgePool(nodes=0)
    with pytest.raises(ConfigError, match="objective"):
        choose_cut([Layer("a", 1, 1, 1)], EdgePool(), Workload(), "fastest")

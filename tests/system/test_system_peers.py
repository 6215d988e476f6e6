"""PeerGraph: the device peer graph of decentralized learning, mode by mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.core.errors import ConfigError
from fedge.system import PEER_GRAPHS, PeerGraph


def ids(n: int) -> list[str]:
    return [f"dev{i}" for i in range(n)]


def random_positions(n: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    xy = np.random.default_rng(seed).uniform(0.0, 1000.0, size=(n, 2))
    return {d: (float(x), float(y)) for d, (x, y) in zip(ids(n), xy, strict=True)}


def assert_undirected_and_ordered(graph: dict[str, tuple[str, ...]], order: list[str]) -> None:
    assert list(graph) == order
    index = {d: i for i, d in enumerate(order)}
    for a, peers in graph.items():
        assert a not in peers
        assert list(peers) == sorted(peers, key=index.__getitem__)
        for b in peers:
            assert a in graph[b]


def test_knn_is_symmetric_and_contains_each_devices_k_nearest() -> None:
    positions = random_positions(25)
    graph = PeerGraph(mode="knn", k=3).neighbours(positions, None)
    assert_undirected_and_ordered(graph, ids(25))
    for a, (xa, ya) in positions.items():
        others = sorted(
            (math.hypot(xa - xb, ya - yb), b) for b, (xb, yb) in positions.items() if b != a
        )
        nearest = {b for _, b in others[:3]}
        assert len(graph[a]) >= 3
        assert nearest <= set(graph[a])
        # any extra neighbour is there because a is among *its* k nearest (union)
        for b in set(graph[a]) - nearest:
            xb, yb = positions[b]
            theirs = sorted(
                (math.hypot(xb - xc, yb - yc), c) for c, (xc, yc) in positions.items() if c != b
            )
            assert a in {c for _, c in theirs[:3]}


def test_knn_breaks_ties_by_device_index_and_symmetrises_by_union() -> None:
    positions = {"dev0": (0.0, 0.0), "dev1": (-10.0, 0.0), "dev2": (10.0, 0.0)}
    graph = PeerGraph(mode="knn", k=1).neighbours(positions, None)
    # dev0's nearest is dev1 (tie with dev2, lower index); dev2's nearest is dev0
    assert graph == {"dev0": ("dev1", "dev2"), "dev1": ("dev0",), "dev2": ("dev0",)}


def test_knn_with_k_at_least_the_others_is_complete() -> None:
    positions = random_positions(4)
    graph = PeerGraph(mode="knn", k=10).neighbours(positions, None)
    assert graph == PeerGraph(mode="complete").neighbours(positions, None)
    assert all(len(p) == 3 for p in graph.values())


def test_radius_includes_a_pair_exactly_at_radius_and_excludes_one_just_beyond() -> None:
    positions = {"dev0": (0.0, 0.0), "dev1": (200.0, 0.0), "dev2": (400.001, 0.0)}
    graph = PeerGraph(mode="radius", radius_m=200.0).neighbours(positions, None)
    assert graph == {"dev0": ("dev1",), "dev1": ("dev0",), "dev2": ()}


def test_radius_matches_brute_force_distances() -> None:
    positions = random_positions(30, seed=4)
    graph = PeerGraph(mode="radius", radius_m=250.0).neighbours(positions, None)
    for a, (xa, ya) in positions.items():
        expected = [
            b for b, (xb, yb) in positions.items() if b != a and math.hypot(xa - xb, ya - yb) <= 250
        ]
        assert list(graph[a]) == expected


def test_complete_links_everyone_but_self() -> None:
    graph = PeerGraph(mode="complete").neighbours(random_positions(4), None)
    assert graph["dev2"] == ("dev0", "dev1", "dev3")
    assert_undirected_and_ordered(graph, ids(4))


def test_edge_mode_groups_devices_by_attachment() -> None:
    positions = random_positions(5)
    attached = {"dev0": "edge1", "dev1": "edge0", "dev2": "edge1", "dev4": "edge1"}
    graph = PeerGraph(mode="edge").neighbours(positions, attached)
    assert graph == {
        "dev0": ("dev2", "dev4"),
        "dev1": (),
        "dev2": ("dev0", "dev4"),
        "dev3": (),  # out of every coverage: no peers
        "dev4": ("dev0", "dev2"),
    }
    with pytest.raises(ConfigError, match="attachment"):
        PeerGraph(mode="edge").neighbours(positions, None)


def test_configured_links_are_undirected_and_validated() -> None:
    peers = PeerGraph(mode="configured", links=(("dev2", "dev0"), ("dev0", "dev1")))
    graph = peers.neighbours(random_positions(4), None)
    assert graph == {"dev0": ("dev1", "dev2"), "dev1": ("dev0",), "dev2": ("dev0",), "dev3": ()}
    bad = PeerGraph(mode="configured", links=(("dev0", "dev1"), ("dev1", "dev9")))
    with pytest.raises(ConfigError) as err:
        bad.neighbours(random_positions(4), None)
    assert err.value.field == "system.peers.links[1]"
    assert err.value.value == ("dev1", "dev9")
    assert "dev0, dev1, dev2, dev3" in err.value.allowed
    with pytest.raises(ConfigError, match=r"system\.peers\.links\[0\]"):
        PeerGraph(mode="configured", links=(("dev1", "dev1"),))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "ring"}, "system.peers.graph"),
        ({"k": 0}, "system.peers.k"),
        ({"k": 2.5}, "system.peers.k"),
        ({"k": True}, "system.peers.k"),
        ({"radius_m": 0.0}, "system.peers.radius_m"),
        ({"radius_m": math.nan}, "system.peers.radius_m"),
    ],
)
def test_bad_parameters_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        PeerGraph(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field
    if field == "system.peers.graph":
        assert all(mode in err.value.allowed for mode in PEER_GRAPHS)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-500, 500), st.floats(-500, 500)), min_size=1, max_size=12),
    st.sampled_from(["knn", "radius", "complete"]),
    st.integers(1, 5),
)
def test_every_distance_graph_is_undirected_without_self_loops(
    xy: list[tuple[float, float]], mode: str, k: int
) -> None:
    positions = dict(zip(ids(len(xy)), xy, strict=True))
    graph = PeerGraph(mode=mode, k=k, radius_m=300.0).neighbours(positions, None)
    assert_undirected_and_ordered(graph, ids(len(xy)))
    if mode == "knn":
        assert all(len(p) >= min(k, len(xy) - 1) for p in graph.values())

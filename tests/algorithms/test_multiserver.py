"""MS-FL on the simulated engine: edges mix their neighbours' models with the chosen rule."""

import pytest
import torch

from fedge.aggregation import weighted_mean
from fedge.core.update import flatten
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.runs.run import run_experiment

MSFL = ["algorithm='msfl'", "system.edges=3", "rounds=1", "data.validation_size=40"]


def run_msfl(tiny_config, rule):
    exp = build(load_config(tiny_config, [*MSFL, f"federation.interserver='{rule}'"]))
    exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 1)
    edges = exp.system.ids("edge")
    states = {e: exp.nodes.apps[e].state for e in edges}
    return exp, edges, states


def neighbourhood(exp, edge):
    return [edge, *exp.system.neighbors(edge)]


def test_ba_adopts_one_of_the_candidates(tiny_config):
    exp, edges, states = run_msfl(tiny_config, "ba")
    for e in edges:
        mixed = flatten(states[e]["model"])
        published = [flatten(states[c]["published"]) for c in neighbourhood(exp, e)]
        assert any(torch.equal(mixed, p) for p in published)


def test_wa_is_the_data_weighted_mean_of_the_neighbourhood(tiny_config):
    exp, edges, states = run_msfl(tiny_config, "wa")
    for e in edges:
        group = neighbourhood(exp, e)
        expected = weighted_mean(
            [states[c]["published"] for c in group], [states[c]["weight"] for c in group]
        )
        assert torch.allclose(flatten(states[e]["model"]), flatten(expected), atol=1e-6)


def test_exchange_uses_the_backhaul_and_charges_validation(tiny_config):
    exp, _, _ = run_msfl(tiny_config, "spaa")
    stats = exp.transport.stats()
    links = sum(len(exp.system.neighbors(e)) for e in exp.system.ids("edge"))
    model_bytes = sum(t.numel() * 4 for t in exp.initial_state.values())
    assert stats["bytes_peer_edge_edge"] > links * model_bytes
    single = build(load_config(tiny_config, [*MSFL, "algorithm='single_server'"]))
    single.coordinator.run(single.transport, single.initial_state, single.rng, 1)
    assert single.transport.stats().get("bytes_peer_edge_edge", 0) == 0
    assert stats["flops"] > single.transport.stats()["flops"]


def test_msfl_reports_per_edge_accuracy_spread(tiny_config):
    rows = run_experiment(load_config(tiny_config, [*MSFL, "rounds=2"])).rows
    assert all(r["accuracy_min"] <= r["accuracy"] <= r["accuracy_max"] for r in rows)
    assert rows[-1]["accepted_peers"] >= 0


MOVING = [
    *MSFL,
    "system.edges=2",
    "system.mobility='highway'",
    "system.speed_min_mps=30",
    "system.speed_max_mps=40",
    "system.device.gflops_min=0.0005",
    "system.device.gflops_max=0.001",
    "rounds=2",
]


def test_a_handed_over_update_reaches_the_new_edge_and_is_counted(tiny_config):
    on = run_experiment(load_config(tiny_config, [*MOVING, "federation.handover=true"])).rows
    assert on[-1]["handover_redirected"] > 0
    assert on[-1].get("handover_lost", 0) == 0
    assert sum(r["handed_over"] for r in on) == on[-1]["handover_redirected"]
    assert [r["round_handover_redirected"] for r in on] == [r["handed_over"] for r in on]
    off = run_experiment(load_config(tiny_config, [*MOVING, "federation.handover=false"])).rows
    assert off[-1]["handover_lost"] > 0
    assert off[-1].get("handover_redirected", 0) == 0
    assert sum(r["handed_over"] for r in off) == 0
    assert on[-1]["participants"] < 10 * 2 or off[-1]["participants"] < 10 * 2


def test_a_malicious_edge_hurts_wa_but_not_ba(tiny_config):
    attack = [
        *MSFL,
        "rounds=2",
        "attack=[{kind = 'scaled', scale = -5.0, tier = 'edge', nodes = ['edge1']}]",
    ]
    acc = {}
    for rule in ("wa", "ba"):
        rows = run_experiment(
            load_config(tiny_config, [*attack, f"federation.interserver='{rule}'"])
        )
        acc[rule] = rows.rows[-1]["accuracy"]
    assert acc["ba"] > acc["wa"] + 0.1


def test_unknown_malicious_edge_is_rejected(tiny_config):
    from fedge.core.errors import ConfigError

    bad = "attack=[{kind = 'gaussian', tier = 'edge', nodes = ['edge9']}]"
    with pytest.raises(ConfigError, match=r"attack\[0\]\.nodes"):
        build(load_config(tiny_config, [*MSFL, bad]))


def test_a_malicious_edge_poisons_only_what_it_publishes_to_peers(tiny_config):
    """The edge's own model stays honest; its peers receive the configured poison."""
    entry = "attack=[{kind = 'scaled', scale = -5.0, tier = 'edge', nodes = ['edge1']}]"
    exp = build(load_config(tiny_config, [*MSFL, entry]))
    exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 1)
    from fedge.core.message import Message

    published = exp.nodes.apps["edge1"].state["published"]
    ask = Message("edge0", "edge1", "get_model", 1)
    sent = exp.transport.send([ask])[0].payload["model"]
    assert sent.kind == "state"
    assert torch.allclose(flatten(sent.state), -5.0 * flatten(published))
    honest = Message("edge1", "edge0", "get_model", 1)
    kept = exp.transport.send([honest])[0].payload["model"]
    assert torch.equal(flatten(kept.state), flatten(exp.nodes.apps["edge0"].state["published"]))

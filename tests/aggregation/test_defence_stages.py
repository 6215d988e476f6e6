"""[defence]: norm bounding, validation-based detection, Krum against sign-flippers, and the
stages at every aggregating tier."""

import numpy as np
import pytest
import torch

from fedge.aggregation import AGGREGATORS
from fedge.aggregation.defence import NormBound, ValidationDetection, detection_scores
from fedge.core.errors import ConfigError
from fedge.core.update import Update
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.runs.run import run_experiment

RNG = np.random.default_rng(0)


def test_norm_bound_clips_long_deltas_and_keeps_short_ones():
    long = Update({"w": torch.tensor([3.0, 4.0])}, kind="delta", origin="a")
    short = Update({"w": torch.tensor([0.3, 0.4])}, kind="delta", origin="b")
    out = NormBound(1.0).prepare([long, short], {"w": torch.zeros(2)}, RNG)
    assert torch.allclose(out[0].state["w"], torch.tensor([0.6, 0.8]))
    assert torch.equal(out[1].state["w"], short.state["w"])
    ref = {"w": torch.tensor([1.0, 1.0])}
    state = Update({"w": torch.tensor([4.0, 5.0])}, origin="c")  # state - ref = (3, 4)
    assert torch.allclose(
        NormBound(1.0).prepare([state], ref, RNG)[0].state["w"], torch.tensor([1.6, 1.8])
    )


def test_detection_flags_a_persistent_sign_flipper_and_excludes_it():
    """Loss ||w - target||²: honest deltas step towards the target, the attacker away."""
    target = torch.ones(50)
    stage = ValidationDetection(lambda s: float(((s["w"] - target) ** 2).sum()), 3, 2)
    gen = torch.Generator().manual_seed(0)
    w = torch.zeros(50)
    for r in range(1, 4):
        step = 0.2 * (target - w)
        honest = [
            Update(
                {"w": step + 0.02 * torch.randn(50, generator=gen)}, 10.0, "delta", origin=f"h{i}"
            )
            for i in range(6)
        ]
        bad = Update({"w": -3.0 * step}, 10.0, "delta", origin="bad")
        kept = stage.prepare([*honest, bad], {"w": w}, RNG)
        if r == 1:
            assert stage.flagged == [] and len(kept) == 7
        w = w + torch.stack([u.state["w"] for u in kept]).mean(0)
    assert stage.flagged == ["bad"]
    assert [u.origin for u in kept] == [f"h{i}" for i in range(6)]
    assert stage.strikes["bad"][:2] == [True, True]
    assert not any(any(v) for k, v in stage.strikes.items() if k != "bad")


def test_detection_scores_against_the_configured_attackers():
    assert detection_scores(["a", "x"], ["a", "b"]) == {
        "flagged": 2.0,
        "detection_precision": 0.5,
        "detection_recall": 0.5,
    }
    assert detection_scores([], ["a"])["detection_precision"] == 1.0
    assert detection_scores([], [])["detection_recall"] == 1.0


def test_krum_selects_from_the_honest_cluster():
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(40, generator=gen)
    honest = [
        Update({"w": v + 0.05 * torch.randn(40, generator=gen)}, origin=f"h{i}") for i in range(7)
    ]
    flipped = [
        Update({"w": -3.0 * v + 0.05 * torch.randn(40, generator=gen)}, origin=f"a{i}")
        for i in range(3)
    ]
    updates = [*flipped[:2], *honest, flipped[2]]
    chosen = AGGREGATORS.get("krum")(updates, RNG, n_byzantine=3)["w"]
    assert any(torch.equal(chosen, u.state["w"]) for u in honest)
    mixed = AGGREGATORS.get("multikrum")(updates, RNG, n_byzantine=3)["w"]
    assert torch.allclose(mixed, torch.stack([u.state["w"] for u in honest]).mean(0), atol=1e-6)


def _stage_types(pipeline):
    return [type(s).__name__ for s in pipeline.prepare_stages]


DEFEND = ["defence.norm_bound=1.0", "defence.detection='validation'", "data.validation_size=30"]


@pytest.mark.parametrize("algorithm", ["fedavg", "hierarchical", "msfl"])
def test_defences_sit_at_every_aggregating_tier(tiny_config, algorithm):
    cfg = load_config(
        tiny_config, [f"algorithm='{algorithm}'", "federation.aggregator='median'", *DEFEND]
    )
    exp = build(cfg)
    expected = ["NormBound", "ValidationDetection"]
    edges = [a.handlers.get("edge_train") for a in exp.nodes.apps.values()]
    servers = [h.__self__ for h in edges if h is not None]
    if algorithm != "msfl":
        assert _stage_types(exp.coordinator.pipeline) == expected
        assert exp.coordinator.pipeline.aggregator == "median"
    if algorithm != "fedavg":
        assert len({id(s) for s in servers}) == len(servers) == 2  # one state per edge
        for server in servers:
            assert _stage_types(server.inner.pipeline) == expected
            assert server.inner.pipeline.aggregator == "median"
    tiers = [f"algorithm='{algorithm}'", *DEFEND, "defence.tiers=['edge']"]
    only_edges = build(load_config(tiny_config, tiers))
    if algorithm != "msfl":
        assert _stage_types(only_edges.coordinator.pipeline) == []


@pytest.mark.parametrize("algorithm", ["hierarchical", "msfl"])
def test_edge_defences_run_in_a_round(tiny_config, algorithm, monkeypatch):
    calls = []
    original = NormBound.prepare

    def counted(self, updates, reference, rng):
        calls.append({u.origin for u in updates})
        return original(self, updates, reference, rng)

    monkeypatch.setattr(NormBound, "prepare", counted)
    cfg = load_config(
        tiny_config, [f"algorithm='{algorithm}'", "defence.norm_bound=0.5", "rounds=1"]
    )
    exp = build(cfg)
    exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 1)
    devices = set(exp.system.ids("device"))
    assert sum(1 for c in calls if c <= devices) == 2  # each edge over its devices
    assert (algorithm == "hierarchical") == any(c == {"edge0", "edge1"} for c in calls)


def test_detection_without_a_validation_split_is_refused(tiny_config):
    with pytest.raises(ConfigError) as err:
        build(
            load_config(tiny_config, ["defence.detection='validation'", "data.validation_size=0"])
        )
    assert err.value.field == "defence.detection"
    with pytest.raises(ConfigError) as err:
        load_config(tiny_config, ["defence.detection_patience=4"])
    assert err.value.field == "defence.detection_patience"


@pytest.mark.slow
def test_detection_flags_a_sign_flipper_within_a_few_rounds(tiny_config):
    overrides = [
        "rounds=4", "federation.clients_per_round=10", "data.validation_size=50",
        "defence.detection='validation'", "output.plots=false",
        "attack=[{kind = 'sign_flip', nodes = ['dev2'], scale = 3.0}]",
    ]  # fmt: skip
    rows = run_experiment(load_config(tiny_config, overrides)).rows
    assert "dev2" in rows[-1]["flagged_ids"].split()
    assert rows[-1]["detection_recall"] == 1.0
    assert rows[-1]["detection_precision"] == 1.0
    assert rows[0]["flagged"] == 0.0  # patience: never on the first scored update


@pytest.mark.slow
def test_backdoor_succeeds_without_defence_and_norm_bounding_stops_it(tiny_config):
    base = [
        "rounds=4", "federation.clients_per_round=10", "data.partition='iid'", "training.epochs=2",
        "output.plots=false",
        "attack=[{kind = 'backdoor', nodes = ['dev0'], target = 7, fraction = 0.5, boost = 10.0}]",
    ]  # fmt: skip
    plain = run_experiment(load_config(tiny_config, base)).rows[-1]
    bounded = run_experiment(load_config(tiny_config, [*base, "defence.norm_bound=0.5"])).rows[-1]
    assert plain["attack_success_rate"] > 0.9
    assert bounded["attack_success_rate"] < 0.2
    assert bounded["accuracy"] > 0.6

"""DPMN's similarity readings (decentralized.similarity) against a hand computation."""

import numpy as np
import pytest

from fedge.core import ConfigError
from fedge.experiment.build import build
from fedge.experiment.config import load_config

PEER = ["algorithm='dpmn'", "system.devices=6", "system.peers.k=2", "training.steps=3",
        "decentralized.prune_warmup=0", "rounds=3"]  # fmt: skip


def flat(state, mask=None):
    """float64 numpy vector of a state's floating entries, zero outside ``mask``."""
    parts = []
    for key in sorted(state):
        v = state[key].detach().numpy().astype(np.float64)
        if mask is not None and key in mask:
            v = np.where(mask[key].numpy(), v, 0.0)
        parts.append(v.ravel())
    return np.concatenate(parts)


def cos(a, b):
    n = np.linalg.norm(a) * np.linalg.norm(b)
    return 0.0 if n == 0 else float(a @ b / n)


def hand(reading, mine, theirs):
    if reading == "update":
        return cos(flat(mine["update"]), flat(theirs["update"]))
    if reading == "model":
        return cos(flat(mine["model"]), flat(theirs["model"]))
    both = {k: mine["mask"][k] & theirs["mask"][k] for k in mine["mask"]}
    return cos(flat(mine["update"], both), flat(theirs["update"], both))


def run_three_rounds(tiny_config, reading):
    """Three rounds reselecting in rounds 1 and 3; round 3 prunes at the target sparsity, so
    the masks differ from device to device when its selection runs."""
    sets = [*PEER, f"decentralized.similarity='{reading}'", "decentralized.reselect_every=2"]
    exp = build(load_config(tiny_config, sets))
    history = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 3)
    states = {d: exp.nodes.apps[d].state for d in exp.system.ids("device")}
    return exp, history.metrics[2], states


@pytest.mark.parametrize("reading", ["update", "model", "mask_overlap"])
def test_each_reading_matches_a_hand_computation(tiny_config, reading):
    exp, row, states = run_three_rounds(tiny_config, reading)
    sims, chosen = [], {}
    for d, st in states.items():
        assert 0.4 < np.mean([m.float().mean() for m in st["mask"].values()]) < 0.6
        mine = {p: hand(reading, st, states[p]) for p in exp.system.peers(d, 0.0)}
        sims += mine.values()
        chosen[d] = sorted((p for p, s in mine.items() if s >= 0.2), key=lambda p: (-mine[p], p))
    assert row["similarity_mean"] == pytest.approx(np.mean(sims), abs=1e-9)
    assert row["similarity_p10"] == pytest.approx(np.percentile(sims, 10), abs=1e-9)
    assert row["similarity_p50"] == pytest.approx(np.percentile(sims, 50), abs=1e-9)
    assert row["similarity_p90"] == pytest.approx(np.percentile(sims, 90), abs=1e-9)
    assert row["similarity_max"] == pytest.approx(max(sims), abs=1e-9)
    for d, st in states.items():
        assert st["selected"] == chosen[d]
    if reading == "mask_overlap":  # the overlap changes the norms, so not today's reading
        today = [hand("update", st, states[p]) for d, st in states.items()
                 for p in exp.system.peers(d, 0.0)]  # fmt: skip
        assert not np.allclose(sims, today)


def test_rounds_without_reselection_report_no_similarities(tiny_config):
    _, row, _ = run_three_rounds(tiny_config, "update")
    assert "similarity_mean" in row
    exp = build(load_config(tiny_config, [*PEER, "decentralized.reselect_every=2", "rounds=2"]))
    history = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 2)
    assert "similarity_mean" not in history.metrics[1]


def test_unknown_reading_is_refused(tiny_config):
    with pytest.raises(ConfigError) as err:
        load_config(tiny_config, ["decentralized.similarity='weights'"])
    assert err.value.field == "decentralized.similarity"

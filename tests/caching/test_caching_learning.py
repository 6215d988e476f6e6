"""The federated recommender and the FDRL agents: what crosses a device boundary, and the
averages their federated rounds produce (recomputed here with numpy)."""

import numpy as np
import pytest
import torch

from fedge.caching.fdrl import Agent, FdrlCache, federated_average
from fedge.caching.recommender import ITEM_KEYS, FederatedMF
from fedge.caching.settings import FdrlSettings


def test_item_embeddings_are_only_averaged_from_device_updates():
    mf = FederatedMF(items=30, dim=4, seed=0)
    rng = np.random.default_rng(0)
    interactions = {d: rng.integers(0, 30, 5 + 3 * d) for d in range(6)}
    sent = []
    original = mf.local_update

    def spy(device, x):
        up = original(device, x)
        sent.append((device, up))
        return up

    mf.local_update = spy
    updates = mf.round(interactions, edge_of={d: d % 2 for d in range(6)})
    assert len(updates) == 6 == len(sent)
    for device, up in sent:
        # only the shared model's entries leave a device: no user embedding, no requests
        assert set(up.state) == set(ITEM_KEYS)
        assert up.state["items"].shape == (30, 4) and up.state["bias"].shape == (30,)
        assert up.weight == len(interactions[device])
    weights = np.array([up.weight for _, up in sent])
    for key in ITEM_KEYS:
        stack = np.stack([up.state[key].double().numpy() for _, up in sent])
        expected = np.tensordot(weights / weights.sum(), stack, axes=1)
        np.testing.assert_allclose(mf.global_state[key].double().numpy(), expected, atol=1e-6)
    assert set(mf._private) == set(range(6))  # user embeddings stay with the devices


def test_the_recommender_learns_what_devices_request():
    mf = FederatedMF(items=20, dim=4, seed=1)
    interactions = {d: np.array([3, 3, 7, 3, 7, 3] * 3) for d in range(4)}
    for _ in range(8):
        mf.round(interactions, edge_of={d: 0 for d in range(4)})
    demand = mf.edge_demand([0, 1], [1.0, 1.0], top_n=5)
    assert set(np.argsort(-demand)[:2]) == {3, 7}


def test_fdrl_agents_hold_the_average_after_a_federated_round():
    cfg = FdrlSettings(hidden=8)
    agents = [Agent(cfg, seed) for seed in range(3)]
    before = [
        {k: v.clone().double().numpy() for k, v in a.net.state_dict().items()} for a in agents
    ]
    assert not np.allclose(before[0]["body.0.weight"], before[1]["body.0.weight"])
    federated_average(agents)
    for key in before[0]:
        expected = np.mean([b[key] for b in before], axis=0)
        for a in agents:
            np.testing.assert_allclose(
                a.net.state_dict()[key].double().numpy(), expected, atol=1e-6
            )
            np.testing.assert_allclose(
                a.target.state_dict()[key].double().numpy(), expected, atol=1e-6
            )


def test_an_fdrl_cache_never_exceeds_its_capacity_and_learns_from_its_decisions():
    cfg = FdrlSettings(hidden=8, batch=8, epsilon=0.5)
    agent = Agent(cfg, 0)
    cache = FdrlCache(4, agent, items=50, training=True)
    rng = np.random.default_rng(0)
    for k, item in enumerate(rng.integers(0, 50, 2000).tolist()):
        if not cache.lookup(item, k):
            cache.admit(item, k)
        assert len(cache) <= 4 and len(set(cache)) == len(cache)
    assert agent.decisions > 100 and agent.learn_steps > 0
    with pytest.raises(AssertionError):
        torch.testing.assert_close(agent.net.state_dict(), Agent(cfg, 0).net.state_dict())

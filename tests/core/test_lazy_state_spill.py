"""Lazy device apps under a state memory budget: measured, spilled, restored, exactly."""

import pickle
import sqlite3
import sys

import pytest
import torch

from fedge.core.errors import FedgeError
from fedge.core.message import Message
from fedge.core.node import LazyApps, NodeApp
from fedge.core.population import STATE_FILE, StateStore, node_state_nbytes
from fedge.runtime.local import LocalTransport, NodeSet, flat_membership

IDS = [f"d{i}" for i in range(8)]


def _count(message, ctx):
    """Adds the message's tensor to a running sum and counts calls (a stateful device)."""
    st = ctx.state
    st["sum"] = st.get("sum", torch.zeros(64, dtype=torch.float64)) + message.payload["x"]
    st["calls"] = st.get("calls", 0) + 1
    st.setdefault("rounds", []).append(message.round)
    return message.reply("ok", {"calls": st["calls"]})


def _relay(message, ctx):
    """Counts, asks the next device to count too (a nested delivery), then counts again:
    the device's state changes after another device was reached."""
    _count(message, ctx)
    nxt = IDS[(IDS.index(ctx.node_id) + 1) % len(IDS)]
    ctx.downstream.send([Message(ctx.node_id, nxt, "count", message.round, message.payload)])
    return _count(message, ctx)


def _make(node_id):
    return NodeApp(node_id, "device", {"count": _count, "relay": _relay})


def _known(node_id):
    return node_id in IDS


def _apps(budget=None, store=None):
    apps = LazyApps({}, IDS, _make, _known)
    if budget is not None:
        apps.limit(budget, store or StateStore())
    return apps


def _drive(apps, kinds=("count", "relay")):
    """Every device, several rounds, in a fixed mixed order, through the local transport."""
    transport = LocalTransport(NodeSet(apps, seed=1), flat_membership({"device": IDS}))
    replies = []
    for r in range(1, 5):
        for i, node in enumerate([*IDS[::2], *IDS[1::2], IDS[0]]):
            x = torch.arange(64, dtype=torch.float64) * (r + i)
            kind = kinds[(r + i) % len(kinds)]
            replies += transport.send([Message("cloud", node, kind, r, {"x": x})])
    return replies


def _states(apps):
    return {n: apps[n].state for n in IDS}


def _assert_same_states(a, b):
    assert a.keys() == b.keys()
    for node in a:
        assert a[node].keys() == b[node].keys(), node
        assert torch.equal(a[node]["sum"], b[node]["sum"]), node
        assert a[node]["sum"].dtype == b[node]["sum"].dtype
        assert a[node]["calls"] == b[node]["calls"] and a[node]["rounds"] == b[node]["rounds"]


def test_the_measure_counts_each_tensor_storage_once():
    """Tensor bytes are the storages' bytes (a view adds nothing); the rest is the objects'
    own sizes, the same for two states of the same shape."""
    big = torch.zeros(10, 10)
    state = {"a": big, "b": torch.zeros(5, dtype=torch.int64), "view": big[2:4], "n": 3}
    empty = {"a": torch.zeros(0), "b": torch.zeros(0, dtype=torch.int64), "view": None, "n": 3}
    view_object = sys.getsizeof(None)  # the view's place holds None in ``empty``
    assert node_state_nbytes(state) - node_state_nbytes(empty) == 400 + 40 - view_object
    assert node_state_nbytes({"x": big, "y": big}) == node_state_nbytes({"x": big, "y": 0}) - (
        sys.getsizeof(0)
    )


def test_a_tiny_budget_drops_and_restores_every_device_exactly(tmp_path):
    plain, limited = _apps(), _apps(budget=1)
    limited.attach(tmp_path)
    assert _drive(plain) == _drive(limited)
    spill = limited.spill
    assert spill.evictions >= len(IDS) and spill.restores > 0
    assert limited.made <= 1  # only the device in use stays
    spill.store.commit()
    db = sqlite3.connect(tmp_path / STATE_FILE)
    rows = dict(db.execute("SELECT node, COUNT(*) FROM state GROUP BY node").fetchall())
    assert set(spill.spilled) <= set(rows)
    _assert_same_states(_states(plain), _states(limited))


def test_a_budget_keeps_the_most_recently_used_devices():
    """What stays is the longest run of most recently used devices whose states fit."""
    plain = _apps()
    _drive(plain, kinds=("count",))
    sizes = {n: node_state_nbytes(plain[n].state) for n in IDS}
    budget = 3 * sizes["d0"]
    apps = _apps(budget=budget)
    _drive(apps, kinds=("count",))
    last_round = [*IDS[::2], *IDS[1::2], IDS[0]]
    recent = list(dict.fromkeys(reversed(last_round)))  # most recent first
    k = max(i for i in range(len(IDS) + 1) if sum(sizes[n] for n in recent[:i]) <= budget)
    assert 2 <= k < len(IDS)
    assert set(apps.spill.sizes) == set(recent[:k]) and apps.made == k
    assert apps.spill.total <= budget < apps.spill.total + sizes[recent[k]]


def test_apps_used_by_a_delivery_in_progress_are_not_dropped(tmp_path):
    """``relay`` changes its device's state after a nested delivery made other apps: with a
    budget of one state, the outer device's changes are kept all the same."""
    plain, limited = _apps(), _apps(budget=1)
    _drive(plain, kinds=("relay",))
    _drive(limited, kinds=("relay",))
    _assert_same_states(_states(plain), _states(limited))


def test_explicit_eviction_and_its_errors(tmp_path):
    apps = _apps(budget=10**9)
    _drive(apps, kinds=("count",))
    before = pickle.loads(pickle.dumps(apps["d2"].state))
    old = apps["d2"]
    apps.evict("d2")
    assert "d2" in apps.spill.spilled and apps.made == len(IDS) - 1
    again = apps["d2"]
    assert again is not old
    _assert_same_states({"d2": before}, {"d2": again.state})
    with pytest.raises(FedgeError, match="cannot evict 'nope'"):
        apps.evict("nope")
    with pytest.raises(FedgeError, match="state_memory_mb"):
        _apps().evict("d1")


def test_a_checkpoint_reads_its_own_rows_after_the_run_went_on(tmp_path):
    """A checkpoint pickles the row of every spilled device. Rows read back after it stay
    until the next checkpoint is written; a resume deletes the rows it does not name
    (written after it by a process that died) and reads the states of its own round."""
    plain = _apps()
    _drive(plain, kinds=("count",))
    apps = _apps(budget=1)
    apps.attach(tmp_path)
    _drive(apps, kinds=("count",))
    saved = pickle.dumps(apps)  # what a checkpoint stores
    apps.checkpointed()
    db = sqlite3.connect(tmp_path / STATE_FILE)

    def rows():
        return {k for (k,) in db.execute("SELECT id FROM state")}

    assert rows() == set(apps.spill.spilled.values())  # nothing else is kept
    first = set(apps.spill.spilled.values())
    _drive(apps, kinds=("count",))  # goes on: reads rows back, writes new ones, then dies
    apps.spill.store.commit()
    assert first < rows()
    resumed = pickle.loads(saved)
    resumed.attach(tmp_path)
    assert rows() == first
    _assert_same_states(_states(plain), _states(resumed))


def test_unbound_store_writes_to_a_temporary_directory_it_removes():
    store = StateStore()
    key = store.put("d0", {"t": torch.ones(3)})
    path = store.path
    assert path is not None and path.exists()
    assert torch.equal(store.get(key)["t"], torch.ones(3))
    with pytest.raises(FedgeError, match="cannot write the state of d1"):
        store.put("d1", {"f": lambda: 0})
    with pytest.raises(FedgeError, match="already open"):
        store.bind(path.parent)
    del store
    assert not path.parent.exists()

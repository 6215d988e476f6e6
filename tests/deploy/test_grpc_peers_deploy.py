"""Decentralized methods as real gRPC deployments: the same rounds as the local engine.

The cloud process drives the rounds (the virtual node ``sync``); devices fetch their peers'
models with calls they start, relayed by their edges (``system.d2d.mode = "relay"``) or
over streams they dial to each other (``direct``). Every device computes exactly what it
computes in one process, so each round's metrics (the means, spreads and extremes of the
devices' own evaluations, the neighbour counts, DPMN's similarities) must equal those of
the in-process transport and of the local engine bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy_helpers import deploy_config, in_process_history, same_value
from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.deploy.local import LocalDeployment
from fedge.deploy.serve import Plan
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.results import read_rows_csv
from fedge.runs.run import run_experiment
from fedge.runtime.simulated import visible_nodes

pytestmark = pytest.mark.grpc

PEERS = ["system.devices=6", "system.peers.k=2"]
BASE = ["rounds=2", "output.plots=false", *PEERS, "decentralized.reselect_every=1"]
CASES = {
    "dpmn-relay": ("dpmn", "relay"),
    "dpmn-direct": ("dpmn", "direct"),
    "dfl-relay": ("dfl", "relay"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_decentralized_deployment_reports_the_local_engines_rounds(
    tmp_path: Path, case: str
) -> None:
    algorithm, mode = CASES[case]
    config = deploy_config(tmp_path)
    overrides = [f"algorithm={algorithm!r}", *BASE, f"system.d2d.mode={mode!r}"]
    expected = [dict(m) for m in in_process_history(config, overrides).metrics]
    rows = {}
    for engine in ("local", "grpc"):
        cfg = load_config(config, [*overrides, f"engine={engine!r}"])
        result = run_experiment(cfg, out_dir=tmp_path / engine)
        rows[engine] = read_rows_csv(result.run_dir / "metrics.csv")
    keys = sorted(expected[0])
    assert {"accuracy", "accuracy_min", "neighbours", "global_accuracy"} <= set(keys)
    assert all(m["neighbours"] > 0 for m in expected)  # peers' models were fetched
    for engine, table in rows.items():
        assert len(table) == 2
        for want, row in zip(expected, table, strict=True):
            differ = [k for k in keys if not same_value(want[k], float(row[k]))]
            assert not differ, f"{engine} differs from the in-process run in {differ}"


def test_the_plan_routes_devices_as_the_d2d_mode_says(tmp_path: Path) -> None:
    config = deploy_config(tmp_path)
    base = ["algorithm='dpmn'", *PEERS]
    relay = Plan.of(load_config(config, base))
    exp = build(load_config(config, base))
    assert relay.peer and relay.hierarchical and not relay.direct
    for d in relay.devices:  # the peers the local engine's devices see
        assert relay.graph[d] == visible_nodes(exp.system, d, "device", 0.0)
        assert relay.parents(d) == [relay.home[d]]
    crossing = {(relay.home[d], relay.home[p]) for d in relay.devices for p in relay.graph[d]} - {
        (e, e) for e in relay.edges
    }
    assert crossing  # some calls cross edges: the deployments below relay them edge to edge
    for a, b in crossing:  # an edge attaches to the edge of every cross-edge peer
        assert b in relay.peers(a)
    direct = Plan.of(load_config(config, [*base, "system.d2d.mode='direct'"]))
    assert direct.direct and not direct.hierarchical
    assert direct.children("cloud") == direct.devices and direct.parents("dev0") == ["cloud"]
    d, p = "dev0", relay.graph["dev0"][0]
    stranger = next(x for x in relay.devices if x != d and x not in relay.graph[d])
    admit = relay.admit(relay.home[p])
    assert admit(Message(d, p, "get_model", 1), d) is None
    assert admit(Message(d, p, "get_model", 1), relay.home[d]) is None  # relayed by its edge
    assert "not peers" in str(admit(Message(d, stranger, "get_model", 1), d))
    assert "not a peer call" in str(admit(Message(d, p, "peer_train", 1), d))
    assert "may not send as" in str(admit(Message(d, p, "get_model", 1), stranger))
    assert "reached" in str(direct.admit(stranger)(Message(d, p, "get_model", 1), d))
    dial = direct.authorize_peer(p)  # who may open a stream to a listening device
    assert dial(d, "device") is None
    outsider = next(x for x in direct.devices if x != p and x not in direct.graph[p])
    assert "is not a peer of" in str(dial(outsider, "device"))
    assert "is not a peer of" in str(dial(d, "edge"))


def test_a_direct_deployment_gives_every_device_an_address_and_its_peers(tmp_path: Path) -> None:
    cfg = load_config(
        deploy_config(tmp_path), ["algorithm='dfl'", *PEERS, "system.d2d.mode='direct'"]
    )
    deployment = LocalDeployment(cfg, tmp_path / "dep")
    commands = deployment.commands()
    assert set(commands) == {"cloud", "devices-cloud-0"}
    devices = commands["devices-cloud-0"]
    peers = {devices[i + 1].split("=")[0] for i, a in enumerate(devices) if a == "--peer"}
    assert peers == set(deployment.plan.devices)


def test_moving_peers_are_refused_on_the_grpc_engine_with_the_reason(tmp_path: Path) -> None:
    config = deploy_config(tmp_path)
    moving = load_config(config, ["algorithm='dpmn'", "system.mobility='highway'"])
    with pytest.raises(ConfigError, match=r"system\.mobility.*'static' for dpmn"):
        Plan.of(moving)

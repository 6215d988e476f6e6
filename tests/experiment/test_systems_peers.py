"""[system.peers] and [system.d2d] reach the SystemModel; bad peer links fail at build time."""

import math

import pytest

from fedge.core.errors import ConfigError
from fedge.experiment.config import apply_overrides, parse_config
from fedge.experiment.systems import build_system
from fedge.system import PeerGraph

SMALL = {"system": {"edges": 2, "devices": 6}}


def system_of(*overrides: str):
    return build_system(parse_config(apply_overrides(SMALL, overrides)).system, seed=0)


def test_defaults_are_a_knn_graph_and_relayed_d2d():
    system = system_of()
    assert system.peer_graph == PeerGraph()
    assert system.d2d is None
    assert len(system.peers("dev0", 0.0)) >= 4


def test_configured_peers_and_direct_d2d_are_built():
    system = system_of(
        "system.peers.graph='configured'",
        "system.peers.links=[['dev0', 'dev3'], ['dev3', 'dev5']]",
        "system.d2d.mode='direct'",
        "system.d2d.bandwidth_mhz=2",
        "system.d2d.tx_power_w=0.1",
        "system.d2d.latency_ms=4",
        "system.wireless.noise_dbm_per_hz=-170",
    )
    assert system.peers("dev3", 0.0) == ["dev0", "dev5"]
    assert system.d2d is not None
    assert system.d2d.bandwidth_hz == 2e6 and system.d2d.device_tx_power_w == 0.1
    assert system.d2d.latency_s == pytest.approx(0.004)
    assert system.d2d.noise_psd_w_per_hz == pytest.approx(10 ** (-17.0) / 1000)
    [hop] = system.transfer("dev0", "dev3", 100, 0.0).hops
    assert hop.tier == "device-device"


def test_radius_and_knn_parameters_reach_the_graph():
    system = system_of("system.peers.graph='radius'", "system.peers.radius_m=50")
    assert system.peer_graph == PeerGraph(mode="radius", radius_m=50.0)
    for d in system.ids("device"):
        x0, y0 = system.position(d, 0.0)
        for p in system.peers(d, 0.0):
            x1, y1 = system.position(p, 0.0)
            assert math.hypot(x0 - x1, y0 - y1) <= 50.0


def test_links_to_unknown_devices_fail_at_build_time():
    with pytest.raises(ConfigError) as err:
        system_of("system.peers.graph='configured'", "system.peers.links=[['dev0', 'dev6']]")
    assert err.value.field.startswith("system.peers.links")
    assert "dev5" in err.value.allowed


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("system.peers.graph='ring'", "system.peers.graph"),
        ("system.peers.k=0", "system.peers.k"),
        ("system.d2d.mode='mesh'", "system.d2d.mode"),
        ("system.d2d.bandwidth_mhz=0", "system.d2d.bandwidth_mhz"),
    ],
)
def test_bad_peer_settings_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        parse_config(apply_overrides(SMALL, [override]))
    assert err.value.field == field

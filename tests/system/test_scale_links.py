"""Shared links: overlapping transfers share a cell's band, the WAN and the backhaul."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedge.core.errors import ConfigError
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.system.generators import build_topology
from fedge.system.model import SystemModel
from fedge.system.sharing import Channel, FlowSpec, LinkSharing, share
from fedge.system.topology import Profiles


def _cell(sharing: LinkSharing) -> SystemModel:
    """One edge at the origin and three devices 100 m away from it (equal rates)."""
    devices = [(100.0, 0.0), (0.0, 100.0), (-100.0, 0.0)]
    topo = build_topology([(0.0, 0.0, 600.0)], devices, np.random.default_rng(0), Profiles())
    return SystemModel(topo, links=sharing)


SIZES = (100_000, 200_000, 400_000)


def test_three_uploads_in_one_cell_finish_as_computed_by_hand() -> None:
    system = _cell(LinkSharing())
    wireless = system.topology.wireless
    r = wireless.rate_bps(100.0, uplink=True)
    lat = wireless.latency_s
    b1, b2, b3 = (8.0 * n for n in SIZES)
    # by hand: three share the band until the smallest is done, then two, then one
    t1 = 3 * b1 / r
    t2 = t1 + 2 * (b2 - b1) / r
    t3 = t2 + (b3 - b2) / r
    batch = [(d, "edge0", n, 0.0) for d, n in zip(system.ids("device"), SIZES, strict=True)]
    costs = system.transfers(batch)
    got = [c.time_s for c in costs]
    assert got == pytest.approx([t1 + lat, t2 + lat, t3 + lat], rel=1e-12)
    # radio energy is power x own airtime at the full rate, as without sharing
    alone = [system.transfer(*item) for item in batch]
    assert [c.tx_energy_j for c in costs] == pytest.approx([c.tx_energy_j for c in alone])


def test_unshared_links_price_each_transfer_alone() -> None:
    system = _cell(LinkSharing(shared=False))
    batch = [(d, "edge0", n, 0.0) for d, n in zip(system.ids("device"), SIZES, strict=True)]
    r = system.topology.wireless.rate_bps(100.0, uplink=True)
    lat = system.topology.wireless.latency_s
    got = [c.time_s for c in system.transfers(batch)]
    assert got == pytest.approx([8.0 * n / r + lat for n in SIZES], rel=1e-12)


def test_fixed_allocation_gives_every_transfer_its_slot() -> None:
    system = _cell(LinkSharing(policy="fixed", slots=4))
    r = system.topology.wireless.rate_bps(100.0, uplink=True)
    lat = system.topology.wireless.latency_s
    batch = [(d, "edge0", n, 0.0) for d, n in zip(system.ids("device"), SIZES, strict=True)]
    got = [c.time_s for c in system.transfers(batch)]
    assert got == pytest.approx([4 * 8.0 * n / r + lat for n in SIZES], rel=1e-12)


def test_a_later_transfer_slows_an_earlier_one() -> None:
    """1000 bits at 1000 bit/s from t=0, another 1000 bits from t=0.5 on the same link:
    the first has 500 bits left at 0.5 and goes at 500 bit/s until 1.5; the second has
    500 bits left then and finishes alone at 2.0."""
    flows = [FlowSpec((("a", "b"),), 125, 0.0), FlowSpec((("c", "b"),), 125, 0.5)]
    timings = share(flows, lambda a, b, t: Channel("link", 1000.0, 0.0), LinkSharing())
    assert [t[0].end_s for t in timings] == pytest.approx([1.5, 2.0])


def test_store_and_forward_hops_share_each_link_separately() -> None:
    """Two 2-hop flows: the first hops share link x, the second hops run on links of
    their own after the first hop's latency."""
    links = {("a", "m"): "x", ("b", "m"): "x", ("m", "c"): "y", ("m", "d"): "z"}
    flows = [
        FlowSpec((("a", "m"), ("m", "c")), 125, 0.0),
        FlowSpec((("b", "m"), ("m", "d")), 250, 0.0),
    ]
    timings = share(flows, lambda a, b, t: Channel(links[a, b], 1000.0, 0.1), LinkSharing())
    # hop 1: both at 500 bit/s until t=2 (1000 bits), the second alone for 1000 more bits
    assert timings[0][0].end_s == pytest.approx(2.1) and timings[1][0].end_s == pytest.approx(3.1)
    assert timings[0][1].end_s == pytest.approx(2.1 + 1.0 + 0.1)
    assert timings[1][1].end_s == pytest.approx(3.1 + 2.0 + 0.1)


TINY_BEFORE = {  # sim_time_s of two rounds before links were shared (every transfer alone)
    "fedavg": 0.8588276671965529,
    "hierarchical": 1.1496756572413722,
    "msfl": 1.3156701716487709,
}


@pytest.mark.parametrize("algorithm", sorted(TINY_BEFORE))
def test_unshared_runs_keep_their_timings(tiny_config: Path, algorithm: str) -> None:
    times = {}
    for shared in ("false", "true"):
        cfg = load_config(
            tiny_config, [f'algorithm="{algorithm}"', f"system.links.shared={shared}"]
        )
        exp = build(cfg)
        exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 2)
        times[shared] = exp.transport.stats()["sim_time_s"]
    assert times["false"] == TINY_BEFORE[algorithm]
    assert times["true"] > times["false"]  # ten devices' uploads share two cells


def test_bad_link_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"system\.links\.slots"):
        LinkSharing(policy="equal", slots=2)
    with pytest.raises(ConfigError, match=r"system\.links\.policy"):
        LinkSharing(policy="round_robin")  # type: ignore[arg-type]


def test_cli_refuses_a_bad_policy_with_exit_2(tiny_config: Path) -> None:
    cmd = [sys.executable, "-m", "fedge.cli", "run", str(tiny_config)]
    proc = subprocess.run(
        [*cmd, "--set", 'system.links.policy="fair"'], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "system.links.policy" in proc.stderr and "Traceback" not in proc.stderr

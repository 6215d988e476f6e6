"""Mobility: highway and grid motion, attachment, handover events, SUMO FCD traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedge.core.errors import ConfigError
from fedge.system import (
    GridMobility,
    HandoverEvent,
    HighwayMobility,
    Profiles,
    StaticMobility,
    Topology,
    TraceMobility,
    attachment,
    build_topology,
    grid_city,
    handover_events,
    highway,
    load_fcd,
)


def two_rsus(coverage_m: float, device_x_m: float = 200.0) -> Topology:
    """RSUs at x = 500 and 1500 m on a 2 km road, one vehicle at ``device_x_m``."""
    edges = [(500.0, 0.0, coverage_m), (1500.0, 0.0, coverage_m)]
    return build_topology(edges, [(device_x_m, 0.0)], np.random.default_rng(0), Profiles())


def test_vehicle_crosses_from_edge0_to_edge1_at_the_hand_computed_time() -> None:
    topo = two_rsus(coverage_m=600.0)
    mob = HighwayMobility(topo, np.random.default_rng(1), (25.0, 25.0), both_directions=False)
    assert mob.road_start_m == 0.0 and mob.road_length_m == 2000.0
    assert mob.velocity_mps("dev0") == 25.0
    # the nearest RSU changes at the midpoint x = 1000 m: (1000 - 200) / 25 = 32 s
    assert attachment(topo, mob, "dev0", 31.9) == "edge0"
    assert attachment(topo, mob, "dev0", 32.1) == "edge1"
    events = handover_events(topo, mob, ["dev0"], 0.0, 40.0, step_s=0.5)
    assert len(events) == 1
    ev = events[0]
    assert (ev.device, ev.from_edge, ev.to_edge) == ("dev0", "edge0", "edge1")
    assert ev.time_s == pytest.approx(32.0, abs=1e-5)


def test_coverage_gap_gives_leave_and_enter_events() -> None:
    topo = two_rsus(coverage_m=400.0)  # gap between x = 900 and x = 1100
    mob = HighwayMobility(topo, np.random.default_rng(1), (20.0, 20.0), both_directions=False)
    events = handover_events(topo, mob, ["dev0"], 0.0, 60.0, step_s=1.0)
    assert [(e.from_edge, e.to_edge) for e in events[:2]] == [("edge0", None), (None, "edge1")]
    assert events[0].time_s == pytest.approx(35.0, abs=1e-5)  # (900 - 200) / 20
    assert events[1].time_s == pytest.approx(45.0, abs=1e-5)  # (1100 - 200) / 20
    nearest = handover_events(topo, mob, ["dev0"], 0.0, 60.0, fallback_nearest=True)
    assert [(e.from_edge, e.to_edge) for e in nearest] == [("edge0", "edge1")]
    assert nearest[0].time_s == pytest.approx(40.0, abs=1e-5)


def test_highway_ring_wraps_and_speeds_in_range() -> None:
    topo = highway(4, 30, np.random.default_rng(2))
    mob = HighwayMobility(topo, np.random.default_rng(3), speed_range_mps=(20.0, 33.0))
    assert np.all((mob.speeds_mps >= 20.0) & (mob.speeds_mps <= 33.0))
    assert set(mob.directions.tolist()) == {-1.0, 1.0}
    times = np.linspace(0.0, 3600.0, 50)
    for dev in ("dev0", "dev7", "dev29"):
        xy = mob.positions(dev, times)
        assert np.all((xy[:, 0] >= 0.0) & (xy[:, 0] < 4000.0))
        assert np.all(xy[:, 1] == topo.node(dev).y_m)
        assert mob.position(dev, 100.0) == pytest.approx(
            tuple(mob.positions(dev, np.array([100.0]))[0])
        )
    assert mob.position("dev0", 0.0) == (topo.devices[0].x_m, topo.devices[0].y_m)
    with pytest.raises(ConfigError, match="device_id"):
        mob.position("dev30", 0.0)
    with pytest.raises(ConfigError, match="speed_range_mps"):
        HighwayMobility(topo, np.random.default_rng(3), speed_range_mps=(30.0, 20.0))


def test_handover_events_sorted_and_consistent_with_attachment() -> None:
    topo = highway(5, 20, np.random.default_rng(4))
    mob = HighwayMobility(topo, np.random.default_rng(5))
    devices = topo.ids("device")
    events = handover_events(topo, mob, devices, 0.0, 120.0, step_s=0.5)
    assert events, "vehicles at 20-33 m/s over 2 min must change RSU"
    assert [e.time_s for e in events] == sorted(e.time_s for e in events)
    for e in events:
        assert e.from_edge != e.to_edge
        assert attachment(topo, mob, e.device, e.time_s) == e.to_edge
        assert attachment(topo, mob, e.device, e.time_s - 1e-4) == e.from_edge
    # the per-device chain of events is continuous
    for dev in devices:
        chain = [e for e in events if e.device == dev]
        current = attachment(topo, mob, dev, 0.0)
        for e in chain:
            assert e.from_edge == current
            current = e.to_edge
        assert current == attachment(topo, mob, dev, 120.0)


def test_static_mobility_has_no_handovers() -> None:
    topo = highway(3, 10, np.random.default_rng(0))
    mob = StaticMobility(topo)
    assert mob.position("dev3", 1e6) == (topo.devices[3].x_m, topo.devices[3].y_m)
    assert handover_events(topo, mob, topo.ids("device"), 0.0, 100.0) == []


def test_grid_mobility_stays_on_streets_moves_continuously_and_is_order_independent() -> None:
    topo = grid_city(3, 3, 6, np.random.default_rng(0), block_m=400.0)
    a = GridMobility(
        topo, np.random.default_rng(9), 3, 3, block_m=400.0, speed_range_mps=(10.0, 10.0)
    )
    b = GridMobility(
        topo, np.random.default_rng(9), 3, 3, block_m=400.0, speed_range_mps=(10.0, 10.0)
    )
    late = b.position("dev2", 500.0)  # query b in another order first
    times = np.arange(0.0, 500.0, 2.0)
    xy = a.positions("dev2", times)
    assert a.position("dev2", 500.0) == pytest.approx(late)
    on_street = (np.abs(xy[:, 0] / 400.0 - np.round(xy[:, 0] / 400.0)) < 1e-9) | (
        np.abs(xy[:, 1] / 400.0 - np.round(xy[:, 1] / 400.0)) < 1e-9
    )
    assert on_street.all()
    assert np.all((xy >= -1e-9) & (xy <= 800.0 + 1e-9))
    step = np.hypot(*np.diff(xy, axis=0).T)
    assert np.all(step <= 10.0 * 2.0 + 1e-6)
    assert step.sum() > 0.9 * 10.0 * 498.0  # it does not stop (turns cut corners only)
    assert a.position("dev2", 123.0) == pytest.approx(
        tuple(a.positions("dev2", np.array([123.0]))[0])
    )
    assert handover_events(topo, a, topo.ids("device"), 0.0, 200.0)


FCD = """<?xml version="1.0" encoding="UTF-8"?>
<fcd-export xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <timestep time="10.00">
    <vehicle id="veh_b" x="0.00" y="5.00" angle="90.00" type="car" speed="10.00" lane="a_0"/>
  </timestep>
  <timestep time="11.00">
    <vehicle id="veh_b" x="10.00" y="5.00" angle="90.00" type="car" speed="10.00"/>
    <vehicle id="veh_a" x="100.00" y="0.00" angle="90.00" type="car" speed="20.00"/>
    <person id="p0" x="3.0" y="3.0"/>
  </timestep>
  <timestep time="12.00">
    <vehicle id="veh_b" x="30.00" y="5.00"/>
    <vehicle id="veh_a" x="120.00" y="0.00"/>
  </timestep>
</fcd-export>
"""


def test_load_fcd_renames_in_order_of_appearance_and_interpolates(tmp_path: Path) -> None:
    path = tmp_path / "fcd.xml"
    path.write_text(FCD)
    mob = load_fcd(path)
    assert mob.device_ids == ["dev0", "dev1"]
    assert mob.source_ids == {"dev0": "veh_b", "dev1": "veh_a"}
    assert mob.time_range_s("dev0") == (0.0, 2.0)
    assert mob.position("dev0", 0.5) == pytest.approx((5.0, 5.0))
    assert mob.position("dev0", 1.5) == pytest.approx((20.0, 5.0))
    assert mob.position("dev1", 0.0) == (100.0, 0.0)  # before its first sample: parked
    assert mob.position("dev1", 9.0) == (120.0, 0.0)  # after its last sample: parked
    kept = load_fcd(path, rename=False, max_devices=1, time_offset_s=0.0)
    assert kept.device_ids == ["veh_b"]
    assert kept.position("veh_b", 11.5) == pytest.approx((20.0, 5.0))


def test_load_fcd_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(FCD.replace('x="10.00"', 'x="ten"'))
    with pytest.raises(ConfigError) as err:
        load_fcd(path)
    assert "vehicle veh_b" in err.value.field and err.value.value == "ten"
    path.write_text("<fcd-export><timestep time='0'>")
    with pytest.raises(ConfigError, match="fcd file"):
        load_fcd(path)
    path.write_text("<fcd-export></fcd-export>")
    with pytest.raises(ConfigError, match="vehicle"):
        load_fcd(path)


def test_trace_mobility_drives_handovers() -> None:
    topo = two_rsus(coverage_m=600.0)
    mob = TraceMobility({"dev0": [(0.0, 200.0, 0.0), (10.0, 1200.0, 0.0)]})
    events = handover_events(topo, mob, ["dev0"], 0.0, 20.0)
    assert events == [HandoverEvent(events[0].time_s, "dev0", "edge0", "edge1")]
    assert events[0].time_s == pytest.approx(8.0, abs=1e-5)  # x = 1000 m at 8 s
    with pytest.raises(ConfigError, match="distinct times"):
        TraceMobility({"dev0": [(0.0, 0.0, 0.0), (0.0, 1.0, 0.0)]})

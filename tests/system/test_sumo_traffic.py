"""Vehicles from SUMO: generated traces drive handovers, replay from the cache, refuse bad input."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from fedge.cli import main
from fedge.core.errors import ConfigError, FedgeError
from fedge.experiment import systems
from fedge.experiment.config import parse_config
from fedge.system import sumo
from fedge.system.traces import TraceMobility

pytestmark = pytest.mark.sumo
needs_sumo = pytest.mark.skipif(
    importlib.util.find_spec("sumo") is None and "SUMO_HOME" not in os.environ,
    reason="needs the sumo extra (pip install 'fedge[sumo]')",
)


def _highway(cache: Path, **sumo_keys: object) -> dict[str, object]:
    keys = {"cache_dir": str(cache), "seconds": 120.0, "insert_s": 20.0, **sumo_keys}
    return {"edges": 2, "devices": 8, "mobility": "sumo", "sumo": keys}


def _crossings(fcd: Path, vehicles: list[str], x_m: float) -> int:
    """Times the vehicles' recorded x crosses ``x_m``, read with sumolib (not fedge's reader)."""
    sumolib = pytest.importorskip("sumolib")
    xs: dict[str, list[float]] = {v: [] for v in vehicles}
    for _, veh in sumolib.xml.parse_fast_nested(
        str(fcd), "timestep", ["time"], "vehicle", ["id", "x"]
    ):
        if veh.id in xs:
            xs[veh.id].append(float(veh.x))
    return sum(int(np.count_nonzero(np.diff(np.sign(np.array(v) - x_m)))) for v in xs.values())


@needs_sumo
def test_sumo_highway_with_two_rsus_hands_vehicles_over(tmp_path: Path) -> None:
    cfg = parse_config({"seed": 3, "system": _highway(tmp_path)})
    system = systems.build_system(cfg.system, 3)
    events = system.handovers(0.0, 120.0, step_s=0.5)
    assert len(events) > 0
    # RSUs at x = 500 and 1500 cover the whole 2 km road, so the attachment changes exactly
    # where a vehicle crosses the midpoint x = 1000 m.
    (fcd,) = tmp_path.glob("fcd-*.xml")
    mobility = system.mobility
    assert isinstance(mobility, TraceMobility)
    vehicles = [mobility.source_ids[f"dev{k}"] for k in range(8)]
    assert len(events) == _crossings(fcd, vehicles, 1000.0)
    for ev in events:
        x_m, _ = mobility.position(ev.device, ev.time_s)
        assert abs(x_m - 1000.0) < 1.0
        assert {ev.from_edge, ev.to_edge} == {"edge0", "edge1"}


@needs_sumo
def test_cached_fcd_replays_without_sumo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config({"system": _highway(tmp_path, network="highway")})
    first = systems.build_system(cfg.system, 0)

    def no_sumo(*args: object) -> None:
        raise AssertionError("SUMO ran although the FCD file is cached")

    monkeypatch.setattr(sumo, "generate_fcd", no_sumo)
    monkeypatch.setattr(sumo, "sumo_home", no_sumo)
    second = systems.build_system(cfg.system, 0)
    times = np.linspace(0.0, 120.0, 61)
    for k in range(8):
        dev = f"dev{k}"
        assert isinstance(first.mobility, TraceMobility)
        assert isinstance(second.mobility, TraceMobility)
        assert np.array_equal(
            first.mobility.positions(dev, times), second.mobility.positions(dev, times)
        )
    # another seed is another scenario: SUMO would have to run
    with pytest.raises(AssertionError, match="SUMO ran"):
        systems.build_system(cfg.system, 1)


@pytest.mark.parametrize(
    ("keys", "field"),
    [
        ({"network": "grid"}, "system.sumo.network"),
        ({"vehicles": 3}, "system.sumo.vehicles"),
        ({"insert_s": 200.0}, "system.sumo.seconds"),
        ({"step_s": 0}, "system.sumo.step_s"),
        ({"lanes_count": 2}, "system.sumo.lanes_count"),
    ],
)
def test_bad_sumo_settings_exit_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: dict[str, object], field: str
) -> None:
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in keys.items()]
    toml = tmp_path / "bad.toml"
    toml.write_text(
        'rounds = 1\n[system]\nedges = 2\ndevices = 8\nmobility = "sumo"\n'
        f'[system.sumo]\ncache_dir = "{tmp_path}"\nseconds = 120.0\n' + "\n".join(lines) + "\n"
    )
    code = main(["run", str(toml), "--set", f"output.dir={tmp_path}/runs"])
    err = capsys.readouterr().err
    assert code == 2
    assert field in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("fcd-*.xml"))


@needs_sumo
def test_too_few_vehicles_entered_names_the_field(tmp_path: Path) -> None:
    # 8 departures asked for in 2 simulated seconds: SUMO cannot insert them all so soon
    cfg = parse_config({"system": _highway(tmp_path, insert_s=2.0, seconds=2.0)})
    with pytest.raises(ConfigError, match=r"system\.sumo\.vehicles.*only \d vehicles entered"):
        systems.build_system(cfg.system, 0)


def test_missing_sumo_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "sumo", None)
    monkeypatch.delenv("SUMO_HOME", raising=False)
    with pytest.raises(FedgeError, match=r"pip install 'fedge\[sumo\]'"):
        sumo.sumo_home()


def test_a_sumo_tool_past_its_timeout_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(FedgeError, match=r"ran longer than 0.2 s \(system.sumo.timeout_s\)"):
        sumo._run(["sleep", "5"], tmp_path, 0.2, "sumo")


@needs_sumo
def test_sumo_city_grid_spans_the_topology_area(tmp_path: Path) -> None:
    keys = {"network": "grid", "grid_size": 3, "cache_dir": str(tmp_path), "seconds": 60.0}
    system_keys = {"topology": "random_geometric", "edges": 3, "devices": 6, "area_m": 400.0}
    raw = {**system_keys, "out_of_coverage": "nearest", "mobility": "sumo", "sumo": keys}
    system = systems.build_system(parse_config({"system": raw}).system, 0)
    mobility = system.mobility
    assert isinstance(mobility, TraceMobility)
    xy = np.vstack([mobility.positions(f"dev{k}", np.arange(0.0, 60.0, 1.0)) for k in range(6)])
    # a 3 x 3 grid 200 m apart: every lane lies within a few metres of [0, 400]^2, and the
    # vehicles really move
    assert xy.min() > -10.0 and xy.max() < 410.0
    assert np.ptp(xy[:, 0]) > 50.0 or np.ptp(xy[:, 1]) > 50.0

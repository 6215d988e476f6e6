"""A run with SUMO vehicles keeps its FCD file in its directory: it resumes without SUMO."""

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
from test_sumo_traffic import _highway

from fedge.experiment import load_config
from fedge.runs import resume_experiment, run_experiment
from fedge.runs.resume import FCD_NAME
from fedge.runtime import NodeSet
from fedge.system import sumo

pytestmark = [
    pytest.mark.sumo,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("sumo") is None and "SUMO_HOME" not in os.environ,
        reason="needs the sumo extra (pip install 'fedge[sumo]')",
    ),
]


class Stop(Exception):
    """Stands for a crash in round 2."""


def test_a_sumo_run_resumes_from_its_own_fcd_file(tiny_config, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    system = _highway(cache)
    sets = [
        "rounds=2",
        "system.edges=2",
        "system.devices=8",
        "system.mobility='sumo'",
        *(f"system.sumo.{k}={v!r}" for k, v in system["sumo"].items()),
    ]
    config = load_config(tiny_config, sets)
    full = run_experiment(config, out_dir=tmp_path / "full")
    (cached,) = cache.glob("fcd-*.xml")
    kept = full.run_dir / FCD_NAME
    assert kept.read_bytes() == cached.read_bytes()

    original = NodeSet.deliver

    def deliver(self, message, downstream):
        if message.round == 2:
            raise Stop
        return original(self, message, downstream)

    with monkeypatch.context() as patch:
        patch.setattr(NodeSet, "deliver", deliver)
        with pytest.raises(Stop):
            run_experiment(config, out_dir=tmp_path / "cut")
    (run_dir,) = (tmp_path / "cut").iterdir()
    shutil.rmtree(cache)

    def no_sumo(*args: object) -> None:
        raise AssertionError("SUMO ran although the run keeps its FCD file")

    monkeypatch.setattr(sumo, "generate_fcd", no_sumo)
    monkeypatch.setattr(sumo, "sumo_home", no_sumo)
    resumed = resume_experiment(run_dir)
    assert [r["round"] for r in resumed.rows] == [1, 2]
    assert resumed.rows[-1]["sim_time_s"] == full.rows[-1]["sim_time_s"]
    assert resumed.rows[-1]["accuracy"] == full.rows[-1]["accuracy"]
    assert Path(cache, cached.name).read_bytes() == kept.read_bytes()

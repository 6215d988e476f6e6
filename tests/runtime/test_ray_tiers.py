"""engine = "ray" beyond device training: edge rounds and peer training on the pool, exactly
as on the local engine, and Ray runs that checkpoint and resume."""

from __future__ import annotations

import json

import pytest
import torch

from fedge.experiment.config import load_config
from fedge.results import RunStore
from fedge.runs import resume_experiment, run_experiment
from fedge.runs.checkpoint import CHECKPOINT_NAME, read_checkpoint_header
from fedge.runtime.ray import RayNodeSet, start_local_ray

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BASE = ["rounds=2", "threads=1", "output.plots=false", "ray.workers=2"]


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module; node sets find it running and leave it up."""
    ray = pytest.importorskip("ray")
    start_local_ray(ray, num_cpus=2)
    yield ray
    ray.shutdown()


class Interrupted(Exception):
    """Stands for a crash in the middle of a round."""


def counting(monkeypatch):
    """Counts, across node sets, offloaded deliveries whose pool result was used or run
    again in the driver."""
    seen = {"remote": 0, "local": 0}
    original = RayNodeSet._deliver_nested

    def deliver(self, message, downstream):
        remote, local = self.remote_subtrees, self.local_subtrees
        out = original(self, message, downstream)
        seen["remote"] += self.remote_subtrees - remote
        seen["local"] += self.local_subtrees - local
        return out

    monkeypatch.setattr(RayNodeSet, "_deliver_nested", deliver)
    return seen


def same_run(a, b) -> None:
    """Same rows, summary (but wall times) and final model."""

    def strip(obj):
        if isinstance(obj, list):
            return [strip(row) for row in obj]
        return json.dumps({k: v for k, v in obj.items() if "wall_time" not in k}, sort_keys=True)

    assert strip(a.rows) == strip(b.rows)
    assert strip(a.summary) == strip(b.summary)
    ma, mb = (torch.load(r.run_dir / "model.pt", weights_only=True) for r in (a, b))
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


def test_moving_vehicles_make_edges_rerun_in_the_driver(ray_session, tiny_config, monkeypatch):
    """Vehicles fast enough to be in two edges' rounds of one cloud round: those rounds
    cannot run apart, the later one runs again in the driver, and nothing changes."""
    sets = [*BASE, "algorithm='msfl'", "system.mobility='highway'"]
    sets += ["system.speed_min_mps=300.0", "system.speed_max_mps=400.0"]
    local = run_experiment(load_config(tiny_config, sets))
    seen = counting(monkeypatch)
    on_ray = run_experiment(load_config(tiny_config, [*sets, "engine='ray'"]))
    assert seen["remote"] > 0 and seen["local"] > 0
    same_run(local, on_ray)


def test_edges_on_shared_links_start_when_their_request_arrives(
    ray_session, tiny_config, monkeypatch
):
    """With shared links the edges' requests are priced together; each subtree must start at
    exactly that arrival, else it would run again in the driver."""
    sets = [*BASE, "algorithm='hierarchical'", "system.links.shared=true"]
    local = run_experiment(load_config(tiny_config, sets))
    seen = counting(monkeypatch)
    on_ray = run_experiment(load_config(tiny_config, [*sets, "engine='ray'"]))
    assert seen == {"remote": 4, "local": 0}  # 2 edges x 2 rounds, all from the pool
    same_run(local, on_ray)


def test_ray_run_resumes_on_ray_bit_identical(ray_session, tiny_config, tmp_path, monkeypatch):
    """A Ray run stopped in round 3 resumes from its round-2 checkpoint on Ray and ends as
    an uninterrupted local run does (Ray equals local: the contract tests)."""
    sets = [*BASE, "rounds=3", "algorithm='hierarchical'"]
    sets += ["compression=[{link='device-edge', method='topk', ratio=0.1}]"]  # EF memory
    full = run_experiment(load_config(tiny_config, sets), out_dir=tmp_path / "full")
    original = RayNodeSet._deliver_nested

    def crash(self, message, downstream):
        if message.round == 3:
            raise Interrupted("round 3")
        return original(self, message, downstream)

    with monkeypatch.context() as patch:
        patch.setattr(RayNodeSet, "_deliver_nested", crash)
        with pytest.raises(Interrupted):
            run_experiment(load_config(tiny_config, [*sets, "engine='ray'"]), tmp_path / "cut")
    (run_dir,) = [p for p in (tmp_path / "cut").iterdir() if p.is_dir()]
    assert read_checkpoint_header(run_dir / CHECKPOINT_NAME)["round"] == 2
    seen = counting(monkeypatch)
    resumed = resume_experiment(run_dir)
    assert seen["remote"] == 2  # round 3's two edge rounds ran on the pool
    assert resumed.run_id == run_dir.name
    with RunStore(tmp_path / "runs" / "fedge.sqlite") as store:
        assert store.get_run(run_dir.name)["status"] == "finished"
    same_run(full, resumed)

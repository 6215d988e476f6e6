"""The fault injector against a scripted deployment: what it logs for each fault is read
from the processes' logs written after the fault, only of the processes concerned."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from fedge.cli import main
from fedge.deploy.faults import KINDS, Fault, FaultInjector, mixed_faults

pytestmark = pytest.mark.grpc


class Scripted:
    """A deployment whose processes 'react' to a restart by writing ``reaction`` lines."""

    def __init__(self, directory: Path, reaction: dict[str, str]) -> None:
        self.directory = directory
        self.proxies = None
        self.reaction = reaction
        self.round = 3
        self.restarted: list[tuple[str, float, tuple[str, ...]]] = []
        (directory / "logs").mkdir(parents=True)
        for name in ("cloud", "edge0", "edge1", "devices-edge0-0"):
            self._write(name, "startup: edge edge0 attached from ipv4:1\n")

    def _write(self, name: str, text: str) -> None:
        with (self.directory / "logs" / f"{name}.log").open("a") as f:
            f.write(text)

    def restart(self, name: str, down_s: float, extra: Sequence[str] = ()) -> None:
        self.restarted.append((name, down_s, tuple(extra)))
        for process, line in self.reaction.items():
            self._write(process, line + "\n")

    def finished(self) -> bool:
        return False

    def completed_round(self) -> int:
        self.round += 1  # every poll sees one more round
        return self.round

    def run_dir(self, timeout_s: float = 0.0) -> Path:
        return self.directory / "run"

    def nodes_of(self, name: str, children: bool = False) -> list[str]:
        assert children  # a killed process: its children notice too
        return {"edge0": ["edge0", "dev1"], "cloud": ["cloud", "edge0", "edge1", "dev1"]}[name]

    def related(self, name: str) -> list[str]:
        return {"edge0": ["edge0", "cloud", "devices-edge0-0"]}.get(name, [name])


def test_a_killed_edge_is_logged_with_how_it_came_back(tmp_path: Path) -> None:
    reaction = {
        "edge0": "edge0: restored its state from x",
        "devices-edge0-0": "dev1: moving to parent 127.0.0.1:2",  # its edge was edge0
        "cloud": "cloud: dropped a late reply from edge1",  # not about edge0: ignored
        "edge1": "edge1: edge0 detached during round 3; waiting",  # not a neighbour: ignored
    }
    deployment = Scripted(tmp_path, reaction)
    log = tmp_path / "faults.log"
    injector = FaultInjector(deployment, [Fault("kill_edge", "edge0", 0.5)], log, settle_s=5)
    (record,) = injector.run()
    assert deployment.restarted == [("edge0", 0.5, ())]
    assert record.survived_by == ("failover", "resume")  # not 'reattach': only old lines say so
    assert record.survived and record.round_after > record.round_before
    assert json.loads(log.read_text())["survived_by"] == ["failover", "resume"]
    assert injector.summary() == {"kill_edge": {"faults": 1, "failover": 1, "resume": 1}}


def test_a_restarted_cloud_resumes_its_run_and_an_unshown_survival_stays_empty(
    tmp_path: Path,
) -> None:
    deployment = Scripted(tmp_path, {"cloud": "cloud: edge edge0 attached from ipv4:1"})
    injector = FaultInjector(deployment, [Fault("kill_cloud", "cloud", 0.0)], tmp_path / "f.log",
                             settle_s=0.5)  # fmt: skip
    (record,) = injector.run()
    assert deployment.restarted == [("cloud", 0.0, ("--resume", str(tmp_path / "run")))]
    # it reattached, but a restarted cloud has survived only once it resumed: not shown here
    assert record.survived_by == ("reattach",) and not record.survived
    with pytest.raises(Exception, match="need a deployment with proxies"):
        FaultInjector(deployment, [Fault("cut_uplink", "edge0", 1.0)], tmp_path / "g.log")
    with pytest.raises(Exception, match="fault kinds \\['meteor'\\]"):
        FaultInjector(deployment, [Fault("meteor", "edge0", 1.0)], tmp_path / "g.log")


def test_mixed_faults_cover_every_kind_on_targets_of_the_right_role() -> None:
    processes = ["cloud", "edge0", "edge1", "devices-edge0-0", "devices-edge1-0"]
    faults = mixed_faults(processes, 20, seed=3)
    assert len(faults) == 20 and {f.kind for f in faults} == set(KINDS)
    for fault in faults:
        role = "cloud" if fault.target == "cloud" else fault.target.split("-")[0]
        allowed = {
            "cut_uplink": "edge0 edge1",
            "delay_uplink": "edge0 edge1",
            "kill_edge": "edge0 edge1",
            "cut_downlink": "devices",
            "delay_downlink": "devices",
            "kill_device": "devices",
            "kill_cloud": "cloud",
            "flap": "edge0 edge1 devices",
        }[fault.kind]
        assert role in allowed.split(), fault
    assert mixed_faults(processes, 20, seed=3) == faults


def test_deploy_local_refuses_a_negative_number_of_faults(tmp_path: Path, capsys) -> None:
    assert main(["deploy-local", str(tmp_path / "x.toml"), "--faults", "-1"]) == 2
    assert "--faults: got -1" in capsys.readouterr().err
    assert main(["serve", "device", "--config", "x.toml", "--id", "d", "--insecure",
                 "--parent", "=127.0.0.1:1"]) == 2  # fmt: skip
    assert "ID=HOST:PORT" in capsys.readouterr().err

"""`fedge deploy-local`: a whole gRPC deployment as processes on loopback, from one config.

The deployment makes a CA and node certificates (unless given), picks free ports, starts
one process for the cloud, one per edge and one per group of devices (devices of the same
edge share a process, each with its own stream and certificate), waits for the cloud to
finish the run and for the others to stop, and returns the run the cloud wrote. Every
process logs to ``DEPLOY_DIR/logs``. ``LocalDeployment`` also lets a test kill and restart
single processes (faults), always by the process id it started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedge.core.errors import FedgeError
from fedge.core.files import atomic_write_bytes
from fedge.deploy.serve import Plan
from fedge.experiment.config import ExperimentConfig, load_config
from fedge.results import read_rows_csv
from fedge.runs.result import RunResult
from fedge.runtime.grpc.tls import make_certs

CLOUD_FILE = "cloud.json"
"""Written by the cloud when its run directory exists: {"run_dir": ..., "run_id": ...}."""
STOP_GRACE_S = 20.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LocalDeployment:
    """The processes of one deployment of ``cfg`` on loopback, all started from the resolved
    config written to ``DIRECTORY/config.json``."""

    cfg: ExperimentConfig
    directory: Path
    certs: str | None = None
    devices_per_process: int = 0
    """0: the devices of one edge (or all, without edges) share a process."""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cfg = self.cfg.model_copy(update={"engine": "grpc"})
        self.plan = Plan.of(self.cfg)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "logs").mkdir(exist_ok=True)
        self.config_path = self.directory / "config.json"
        self.config_path.write_text(json.dumps(self.cfg.model_dump(), indent=1))
        if self.certs is None:
            self.certs = str(make_certs(self.directory / "certs", self.plan.nodes()))
        host = self.cfg.grpc.host
        base = self.cfg.grpc.base_port
        parents = ["cloud", *(self.plan.edges if self.plan.hierarchical else [])]
        parents += self.plan.devices if self.plan.direct else []  # peers dial them
        self.address = {
            node: f"{host}:{base + i if base else free_port(host)}"
            for i, node in enumerate(parents)
        }
        self.groups = self._device_groups()

    def _device_groups(self) -> dict[str, list[str]]:
        by_parent: dict[str, list[str]] = {}
        for device in self.plan.devices:
            by_parent.setdefault(self.plan.parents(device)[0], []).append(device)
        size = self.devices_per_process
        groups: dict[str, list[str]] = {}
        for parent, devices in by_parent.items():
            step = size or len(devices)
            for i in range(0, len(devices), step):
                groups[f"devices-{parent}-{i // step}"] = devices[i : i + step]
        return groups

    def _command(self, role: str, *args: str) -> list[str]:
        config = str(self.config_path)
        return [sys.executable, "-m", "fedge.cli", "serve", role, "--config", config,
                "--certs", str(self.certs), *args]  # fmt: skip

    def commands(self) -> dict[str, list[str]]:
        """The command line of every process, by process name."""
        out = {
            "cloud": self._command(
                "cloud",
                "--listen",
                self.address["cloud"],
                "--out",
                str(self.directory.parent),  # the run sits beside `fedge run`'s runs
                "--announce",
                str(self.directory / CLOUD_FILE),
            )
        }
        for edge in self.plan.edges if self.plan.hierarchical else []:
            peers = [a for p in self.plan.peers(edge) for a in ("--peer", f"{p}={self.address[p]}")]
            out[edge] = self._command(
                "edge", "--id", edge, "--listen", self.address[edge],
                "--parent", self.address["cloud"],
                "--state-dir", str(self.directory / "state"), *peers,
            )  # fmt: skip
        for name, devices in self.groups.items():
            parents = [
                a for p in self.plan.parents(devices[0]) for a in ("--parent", self.address[p])
            ]
            out[name] = self._command("device", "--id", ",".join(devices), *parents)
            if self.plan.direct:
                known = dict.fromkeys(p for d in devices for p in [d, *self.plan.graph[d]])
                out[name] += [a for p in known for a in ("--peer", f"{p}={self.address[p]}")]
        return out

    def start(self, name: str, extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        log = (self.directory / "logs" / f"{name}.log").open("ab")
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.Popen(
            [*self.commands()[name], *extra], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        self.processes[name] = proc
        return proc

    def start_all(self) -> None:
        for name in self.commands():
            self.start(name)

    def kill(self, name: str) -> None:
        """SIGKILL the process ``name`` (one this deployment started) and reap it."""
        proc = self.processes[name]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def kill_all(self) -> None:
        for name in self.processes:
            self.kill(name)

    def wait_cloud(self, timeout_s: float) -> int:
        try:
            return self.processes["cloud"].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise FedgeError(f"the cloud did not finish within {timeout_s:.0f} s") from None

    def run_dir(self, timeout_s: float = 0.0) -> Path:
        """The run directory the cloud announced (waits up to ``timeout_s`` for it)."""
        path = self.directory / CLOUD_FILE
        finish_s = time.monotonic() + timeout_s
        while not path.exists() and time.monotonic() < finish_s:
            time.sleep(0.2)
        if not path.exists():
            raise FedgeError(f"the cloud wrote no {path}; see {self.directory / 'logs'}")
        return Path(json.loads(path.read_text())["run_dir"])

    def stop(self) -> None:
        """Wait a while for every process to exit after shutdown, then kill the rest."""
        finish_s = time.monotonic() + STOP_GRACE_S
        for proc in self.processes.values():
            left_s = max(0.1, finish_s - time.monotonic())
            try:
                proc.wait(timeout=left_s)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def deploy_local(
    cfg: ExperimentConfig,
    out: str | Path | None = None,
    certs: str | None = None,
    devices_per_process: int = 0,
    timeout_s: float = 24 * 3600,
    echo: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run ``cfg`` as a gRPC deployment on loopback; returns the run directory the cloud
    wrote (the same files as ``fedge run``) and its summary."""
    root = Path(out if out is not None else cfg.output.dir)
    directory = root / f"deploy-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    deployment = LocalDeployment(cfg, directory, certs, devices_per_process)
    if echo is not None:
        echo(f"deploy-local: {len(deployment.commands())} processes, logs in {directory}/logs")
    deployment.start_all()
    try:
        code = deployment.wait_cloud(timeout_s)
    finally:
        deployment.stop()
    if code != 0:
        raise FedgeError(f"the cloud exited with status {code}; see {directory}/logs/cloud.log")
    run_dir = deployment.run_dir()
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def run_deployment(
    config: ExperimentConfig, out_dir: str | Path | None, echo: Callable[[str], None] | None
) -> RunResult:
    """The ``grpc`` engine's launcher: the run as processes on loopback (``deploy_local``)."""
    run_dir, summary = deploy_local(config, out_dir, echo=echo)
    return RunResult(run_dir.name, run_dir, summary, read_rows_csv(run_dir / "metrics.csv"))


def node_ids_for_certs(config_path: str | None, nodes: str) -> list[str]:
    """Every node of the config's deployment, plus the ids listed in ``nodes``."""
    ids = [n for n in nodes.split(",") if n]
    if config_path is not None:
        ids = [*Plan.of(load_config(config_path)).nodes(), *ids]
    if not ids:
        raise FedgeError("certs: got no nodes; allowed: --config CONFIG.toml and/or --nodes a,b")
    return list(dict.fromkeys(ids))


def _logging() -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _announcer(path: str | None) -> Callable[[Path], None] | None:
    if path is None:
        return None

    def announce(run_dir: Path) -> None:
        where = {"run_dir": str(run_dir), "run_id": run_dir.name}
        atomic_write_bytes(path, json.dumps(where).encode())

    return announce


def _peers(items: Sequence[str]) -> dict[str, str]:
    """``ID=HOST:PORT`` items as a mapping; a malformed one is named."""
    peers = {}
    for item in items:
        node, sep, address = item.partition("=")
        if not sep or not node or ":" not in address:
            raise FedgeError(
                f"--peer: got {item!r}; allowed: ID=HOST:PORT, e.g. edge1=10.0.0.2:50061"
            )
        peers[node] = address
    return peers


def serve_from_cli(args: Any) -> int:
    """`fedge serve`: check the arguments for the role, then serve until shutdown."""
    from fedge.deploy.serve import serve_cloud, serve_devices, serve_edge

    cfg = load_config(args.config, args.overrides)
    certs = None if args.insecure else (args.certs or cfg.grpc.certs)
    if certs is None and not args.insecure:
        raise FedgeError(
            "serve: no certificates; allowed: --certs DIR (see `fedge certs`), "
            "grpc.certs in the config, or --insecure"
        )
    _logging()
    if args.role == "cloud":
        listen = args.listen or f"{cfg.grpc.host}:{cfg.grpc.base_port or 50051}"
        serve_cloud(cfg, listen, certs, args.out, args.resume, _announcer(args.announce))
        return 0
    if not args.parent:
        raise FedgeError(f"serve {args.role}: got no --parent; allowed: --parent HOST:PORT")
    if args.role == "edge":
        if not args.listen:
            raise FedgeError("serve edge: got no --listen; allowed: --listen HOST:PORT")
        state_dir = args.state_dir or cfg.grpc.checkpoint_dir or str(Path(cfg.output.dir) / "state")
        serve_edge(cfg, args.id, args.listen, args.parent, certs, state_dir, _peers(args.peer))
        return 0
    serve_devices(cfg, [i for i in args.id.split(",") if i], args.parent, certs, _peers(args.peer))
    return 0

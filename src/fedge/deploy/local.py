"""`fedge deploy-local`: a whole gRPC deployment as processes on loopback, from one config.

The deployment makes a CA and node certificates (unless given), picks free ports, starts
one process for the cloud, one per edge and one per group of devices (devices of the same
edge share a process, each with its own stream and certificate), waits for the cloud to
finish the run and for the others to stop, and returns the run the cloud wrote. Every
process logs to ``DEPLOY_DIR/logs``. ``LocalDeployment`` also lets a test kill and restart
single processes (faults), always by the process id it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedge.core.errors import FedgeError
from fedge.core.files import atomic_write_bytes
from fedge.deploy.faults import (
    FAULTS_LOG,
    Fault,
    FaultInjector,
    FaultRecord,
    LinkProxies,
    mixed_faults,
)
from fedge.deploy.serve import Plan
from fedge.experiment.config import ExperimentConfig, load_config
from fedge.results import read_rows_csv
from fedge.runs.checkpoint import CHECKPOINT_NAME, read_checkpoint_header
from fedge.runs.result import RunResult
from fedge.runtime.grpc.tls import make_certs, names_node

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
    faults: bool = False
    """Put a ``LinkProxy`` on every child→parent link (``proxies``) to inject network faults."""
    proxies: LinkProxies | None = None
    link_latency_s: float = 0.0
    """With ``faults``: the latency of every healthy link, each way (a WAN on loopback)."""

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
        self._last_round = 0
        self._restarting: set[str] = set()
        if self.faults and self.proxies is None:
            self.proxies = LinkProxies(host, self.link_latency_s)

    def _dial(self, child: str, parent: str) -> str:
        """``ID=HOST:PORT`` the process ``child`` dials to reach ``parent``: its proxy with
        faults on, else the listener. The id makes the child check the parent's certificate
        (when the certificates name their nodes)."""
        address = self.address[parent]
        if self.proxies is not None:
            address = self.proxies.add(f"{child}->{parent}", address)
        named = self.certs is not None and names_node(Path(self.certs), parent)
        return f"{parent}={address}" if named else address

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
            peers = [a for p in self.plan.peers(edge) for a in ("--peer", self._peer(edge, p))]
            out[edge] = self._command(
                "edge", "--id", edge, "--listen", self.address[edge],
                "--parent", self._dial(edge, "cloud"),
                "--state-dir", str(self.directory / "state"), *peers,
            )  # fmt: skip
        for name, devices in self.groups.items():
            parents = [
                a for p in self.plan.parents(devices[0]) for a in ("--parent", self._dial(name, p))
            ]
            out[name] = self._command("device", "--id", ",".join(devices), *parents)
            if self.plan.direct:
                known = dict.fromkeys(p for d in devices for p in [d, *self.plan.graph[d]])
                out[name] += [a for p in known for a in ("--peer", f"{p}={self.address[p]}")]
        return out

    def _peer(self, edge: str, peer: str) -> str:
        address = self._dial(edge, peer).rpartition("=")[2]
        return f"{peer}={address}"

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
        """Kill every process still running, and close the proxies."""
        for name in self.processes:
            self.kill(name)
        if self.proxies is not None:
            self.proxies.close()
            self.proxies = None

    def inject(self, faults: int | Sequence[Fault], settle_s: float = 120.0) -> FaultThread:
        """Play ``faults`` (a count of mixed ones, or the list) in a thread, once the cloud
        has started, logging them to ``DIRECTORY/faults.log``; returns the thread."""
        if isinstance(faults, int):
            faults = mixed_faults(list(self.commands()), faults, self.cfg.seed)
        injector = FaultInjector(self, faults, self.directory / FAULTS_LOG, settle_s)
        thread = FaultThread(injector, self)
        thread.start()
        return thread

    def related(self, name: str) -> list[str]:
        """The processes that notice when process ``name`` or its links fail: itself, its
        parents and its children (all of them for the cloud)."""
        if name == "cloud":
            return list(self.commands())
        parents = {name: ["cloud"]} if name in self.plan.edges else {}
        for group, devices in self.groups.items():
            edges = self.plan.parents(devices[0]) if self.plan.hierarchical else ["cloud"]
            if group == name:
                parents[group] = edges
            elif name in edges:
                parents[group] = [name]
        return list(dict.fromkeys([name, *parents.get(name, []), *parents]))

    def nodes_of(self, name: str, children: bool = False) -> list[str]:
        """The node ids process ``name`` hosts, with ``children`` also those attached to
        them by the plan (every node for the cloud: all notice it)."""
        if name == "cloud":
            return self.plan.nodes() if children else ["cloud"]
        hosted = list(self.groups.get(name, [name]))
        below = self.plan.children(name) if children and name in self.plan.edges else []
        return [*hosted, *below]

    def finished(self) -> bool:
        """Whether the cloud process has exited."""
        cloud = self.processes.get("cloud")
        return cloud is not None and cloud.poll() is not None and not self._replaced(cloud)

    def completed_round(self) -> int:
        """The last round the cloud checkpointed (0 before the first, or before it started)."""
        if not (self.directory / CLOUD_FILE).exists():
            return 0
        checkpoint = self.run_dir() / CHECKPOINT_NAME
        with contextlib.suppress(FedgeError):  # none yet, or being replaced: the last seen
            self._last_round = int(read_checkpoint_header(checkpoint)["round"])
        return self._last_round

    def restart(self, name: str, down_s: float, extra: Sequence[str] = ()) -> None:
        """Kill process ``name``, leave it down ``down_s``, start it again with ``extra``
        arguments (``wait_cloud`` waits for the new cloud meanwhile)."""
        self._restarting.add(name)
        try:
            self.kill(name)
            time.sleep(down_s)
            self.start(name, extra)
        finally:
            self._restarting.discard(name)

    def wait_cloud(self, timeout_s: float) -> int:
        """The exit status of the cloud (of the last one started, across restarts)."""
        finish_s = time.monotonic() + timeout_s
        while True:
            cloud = self.processes["cloud"]
            try:
                code = cloud.wait(timeout=max(0.0, min(1.0, finish_s - time.monotonic())))
            except subprocess.TimeoutExpired:
                code = None
            if code is not None and not self._replaced(cloud):
                return code
            if time.monotonic() >= finish_s:
                raise FedgeError(f"the cloud did not finish within {timeout_s:.0f} s")
            time.sleep(0.1 if code is not None else 0.0)

    def _replaced(self, process: subprocess.Popen[bytes]) -> bool:
        """Whether ``process`` (the cloud's) is being restarted or was replaced."""
        return "cloud" in self._restarting or self.processes["cloud"] is not process

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


class FaultThread(threading.Thread):
    """Runs a ``FaultInjector`` once the cloud announced its run directory."""

    def __init__(self, injector: FaultInjector, deployment: LocalDeployment) -> None:
        super().__init__(name="fedge-faults", daemon=True)
        self.injector = injector
        self.deployment = deployment

    @property
    def records(self) -> list[FaultRecord]:
        return self.injector.records

    def run(self) -> None:
        with contextlib.suppress(FedgeError):  # no run directory: the cloud failed early
            self.deployment.run_dir(self.injector.settle_s)
            self.injector.run()

    def stop(self, timeout_s: float = STOP_GRACE_S) -> None:
        """Inject no further fault; wait for the one under way to end."""
        self.injector.stopped.set()
        self.join(timeout_s)


def deploy_local(
    cfg: ExperimentConfig,
    out: str | Path | None = None,
    certs: str | None = None,
    devices_per_process: int = 0,
    timeout_s: float = 24 * 3600,
    echo: Callable[[str], None] | None = None,
    faults: int | Sequence[Fault] = 0,
) -> tuple[Path, dict[str, Any]]:
    """Run ``cfg`` as a gRPC deployment on loopback; returns the run directory the cloud
    wrote (the same files as ``fedge run``) and its summary.

    ``faults``: a number of mixed faults (``faults.mixed_faults`` with the config's seed) or
    the faults themselves, injected one at a time through a proxy on every link (and by
    killing and restarting processes); the fault log goes to ``FAULTS_LOG`` in the run
    directory."""
    root = Path(out if out is not None else cfg.output.dir)
    directory = root / f"deploy-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    deployment = LocalDeployment(cfg, directory, certs, devices_per_process, faults=bool(faults))
    if echo is not None:
        echo(f"deploy-local: {len(deployment.commands())} processes, logs in {directory}/logs")
    deployment.start_all()
    injector = deployment.inject(faults) if faults else None
    try:
        code = deployment.wait_cloud(timeout_s)
    finally:
        if injector is not None:
            injector.stop()
        deployment.stop()
        deployment.kill_all()
    if code != 0:
        raise FedgeError(f"the cloud exited with status {code}; see {directory}/logs/cloud.log")
    run_dir = deployment.run_dir()
    if injector is not None:
        shutil.copyfile(directory / FAULTS_LOG, run_dir / FAULTS_LOG)
        if echo is not None:
            echo(f"faults: {len(injector.records)} injected, log in {run_dir / FAULTS_LOG}")
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


def _parents(items: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``--parent`` items (``HOST:PORT`` or ``ID=HOST:PORT``) as addresses in order, and the
    node id each named address's certificate must carry."""
    named = {i.partition("=")[2]: i.partition("=")[0] for i in items if "=" in i}
    return [i.rpartition("=")[2] for i in items], named


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
        addresses, names = _parents(args.parent)
        peers = _peers(args.peer)
        serve_edge(cfg, args.id, args.listen, addresses, certs, state_dir, peers, names)
        return 0
    addresses, names = _parents(args.parent)
    ids = [i for i in args.id.split(",") if i]
    serve_devices(cfg, ids, addresses, certs, _peers(args.peer), names)
    return 0

"""`fedge serve cloud|edge|device`: one node of a gRPC deployment as a real process.

Every process builds the experiment from the same config (so data partitions, models and
seeds agree) and keeps only its own nodes. The cloud runs the coordinator and writes the
run directory exactly as ``fedge run`` does; edges and devices dial their parents and
answer requests until the cloud says ``shutdown``.

Supported: the FedAvg family (devices attach to the cloud), hierarchical FL (devices to
their edge, edges to the cloud) and multi-server FL (edges also attach to their neighbour
edges, which fetch their models through those streams).

Interpretations: deadlines are wall-clock seconds here; a device's parents are its home
edge then that edge's neighbours (handover when its edge dies); an edge waits for its home
devices (and neighbour edges) before it dials the cloud, and the cloud for
every edge (or device), so the first round sees the whole federation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedge.algorithms import ALGORITHMS
from fedge.core.errors import ConfigError, FedgeError
from fedge.core.node import NodeApp
from fedge.experiment.build import Experiment, build
from fedge.experiment.config import ExperimentConfig
from fedge.experiment.engines import set_threads
from fedge.experiment.systems import build_system
from fedge.results import write_json
from fedge.runtime.grpc.figures import MEASURED_PREFIX as MEASURED
from fedge.runtime.grpc.figures import NodeFigures, modelled_keys
from fedge.runtime.grpc.node import EdgeState, NodeProcess, shutdown_children

log = logging.getLogger("fedge.grpc")
ROLES = ("cloud", "edge", "device")
SUPPORTED_ROLES = {
    (): "devices attach to the cloud",
    ("edge",): "devices -> edges -> cloud",
    ("edge", "exchange"): "devices -> edges -> cloud, and each edge to its neighbour edges",
}


@dataclass(frozen=True)
class Plan:
    """Who is whose parent in a deployment of ``cfg``."""

    hierarchical: bool
    exchange: bool
    """Edges also attach to their neighbour edges (multi-server FL's model exchange)."""
    edges: list[str]
    devices: list[str]
    home: dict[str, str]
    neighbours: dict[str, list[str]]

    @staticmethod
    def of(cfg: ExperimentConfig) -> Plan:
        spec = ALGORITHMS.get(cfg.algorithm, "algorithm")
        if spec.roles not in SUPPORTED_ROLES:
            supported = [
                a for a in ALGORITHMS.names() if ALGORITHMS.get(a).roles in SUPPORTED_ROLES
            ]
            raise ConfigError(
                "algorithm", cfg.algorithm, "on the grpc engine one of " + ", ".join(supported)
            )
        system = build_system(cfg.system, cfg.seed)
        edges, devices = system.ids("edge"), system.ids("device")
        home = {d: system.attachment(d, 0.0) for d in devices}
        neighbours = {e: list(system.neighbors(e)) for e in edges}
        edged = "edge" in spec.roles
        return Plan(edged, "exchange" in spec.roles, edges, devices, home, neighbours)

    def children(self, node_id: str) -> list[str]:
        if node_id == "cloud":
            return self.edges if self.hierarchical else self.devices
        return [d for d in self.devices if self.home[d] == node_id]

    def parents(self, device: str) -> list[str]:
        """Parent nodes of a device in the order it tries them."""
        if not self.hierarchical:
            return ["cloud"]
        home = self.home[device]
        return [home, *self.neighbours.get(home, [])]

    def peers(self, edge: str) -> list[str]:
        """The neighbour edges ``edge`` exchanges models with (none without exchange)."""
        return list(self.neighbours.get(edge, [])) if self.exchange else []

    def authorize(self, node_id: str) -> Callable[[str, str], str | None]:
        """Which children ``node_id`` accepts: the cloud its edges (or devices), an edge any
        device (handover) and its neighbour edges when they exchange models."""
        if node_id == "cloud":
            known = {"edge" if self.hierarchical else "device": set(self.children("cloud"))}
        else:
            known = {"device": set(self.devices), "edge": set(self.peers(node_id))}

        def check(child: str, claimed_tier: str) -> str | None:
            if child not in known.get(claimed_tier, set()):
                return f"{child!r} ({claimed_tier}) may not attach to {node_id}"
            return None

        return check

    def nodes(self) -> list[str]:
        return ["cloud", *(self.edges if self.hierarchical else []), *self.devices]


def _local(cfg: ExperimentConfig) -> ExperimentConfig:
    return cfg.model_copy(update={"engine": "local"})


def _check_ids(plan: Plan, role: str, ids: Sequence[str]) -> None:
    allowed = {"cloud": ["cloud"], "edge": plan.edges, "device": plan.devices}[role]
    unknown = [i for i in ids if i not in allowed]
    if unknown or not ids:
        shown = ", ".join(allowed[:8]) + (" ..." if len(allowed) > 8 else "")
        raise ConfigError("--id", ",".join(ids) or "(none)", f"{role} ids among {shown}")
    if role == "edge" and not plan.hierarchical:
        raise ConfigError("serve", "edge", "cloud or device: this algorithm has no edge servers")


def serve_cloud(
    cfg: ExperimentConfig,
    listen: str,
    certs: str | None,
    out_dir: str | None = None,
    resume_dir: str | None = None,
    announce: Callable[[Path], None] | None = None,
) -> Path:
    """Run the coordinator with its children attached over gRPC; returns the run directory."""
    from fedge.runs.run import resume_experiment, run_experiment

    cfg = cfg.model_copy(update={"engine": "grpc"})  # recorded with the run
    plan = Plan.of(cfg)
    settings = cfg.grpc
    process = NodeProcess(settings, certs, seed=0)
    transport = process.serve("cloud", listen, plan.authorize("cloud"), plan.nodes())

    def attach(exp: Experiment) -> None:
        assert process.hub is not None
        missing = process.hub.wait_for(plan.children("cloud"), cfg.grpc.connect_timeout_s)
        if missing:
            raise FedgeError(
                f"{len(missing)} nodes did not attach within grpc.connect_timeout_s = "
                f"{cfg.grpc.connect_timeout_s}: {', '.join(missing[:8])}"
            )
        exp.transport = transport  # type: ignore[assignment]
        process.hub.figures = NodeFigures("cloud", "cloud", exp.system)

    try:
        if resume_dir is not None:
            log.info("cloud: resuming %s from its last checkpoint", resume_dir)
            result = resume_experiment(resume_dir, progress=False, prepare=attach, started=announce)
        else:
            result = run_experiment(cfg, out_dir, progress=False, prepare=attach, started=announce)
        shutdown_children(transport)
    finally:
        process.close()
    _mark_figures(result.run_dir / "summary.json")
    return result.run_dir


def _mark_figures(path: Path) -> None:
    """Name in summary.json which figures the system model computed and which were measured
    (the same keys as a local run's, but here only the bytes are counted on the wire)."""
    summary = json.loads(path.read_text())
    summary["modelled"] = modelled_keys(summary)
    summary["measured"] = sorted(k for k in summary if k.startswith(("bytes_", "wire_", MEASURED)))
    write_json(summary, path)


def serve_edge(
    cfg: ExperimentConfig,
    edge: str,
    listen: str,
    parents: Sequence[str],
    certs: str | None,
    state_dir: str,
    peers: Mapping[str, str] | None = None,
) -> None:
    """Serve one edge until the cloud says shutdown: devices below, the cloud above, and
    (multi-server FL) a stream to each neighbour edge in ``peers`` (id -> address)."""
    plan = Plan.of(cfg)
    _check_ids(plan, "edge", [edge])
    set_threads(cfg)
    exp = build(_local(cfg))
    app = exp.nodes.apps[edge]
    process = NodeProcess(cfg.grpc, certs, exp.nodes.seed)
    figures = NodeFigures(edge, "edge", exp.system)
    try:
        order = [*plan.devices, *plan.edges]
        downstream = process.serve(edge, listen, plan.authorize(edge), order, figures)
        _attach_peers(process, app, plan.peers(edge), peers or {}, figures)
        assert process.hub is not None
        expected = [*plan.children(edge), *plan.peers(edge)]
        missing = process.hub.wait_for(expected, cfg.grpc.connect_timeout_s)
        if missing:
            log.warning("%s: %s did not attach; going on without them", edge, missing)
        state = EdgeState(state_dir, app)
        state.restore()
        attachment = process.attach(app, parents, downstream, figures=figures)
        attachment.after.append(state.save)
        process.keep_training(attachment)
        process.wait()
    finally:
        process.close()


def _attach_peers(
    process: NodeProcess,
    app: NodeApp,
    neighbours: Sequence[str],
    peers: Mapping[str, str],
    figures: NodeFigures | None = None,
) -> None:
    """Attach ``app`` to every neighbour edge; their requests (``get_model``) run on their
    own thread, so two edges exchanging at once never wait on each other."""
    unknown = [n for n in neighbours if n not in peers]
    if unknown:
        raise ConfigError("--peer", ", ".join(unknown), "ID=HOST:PORT for every neighbour edge")
    for neighbour in neighbours:
        process.attach(
            app, [peers[neighbour]], executor=process.own_thread(), figures=figures, reports=False
        )


def serve_devices(
    cfg: ExperimentConfig, ids: Sequence[str], parents: Sequence[str], certs: str | None
) -> None:
    """Serve devices (one stream and identity each) until their parent says shutdown."""
    plan = Plan.of(cfg)
    _check_ids(plan, "device", ids)
    set_threads(cfg)
    exp = build(_local(cfg))
    process = NodeProcess(cfg.grpc, certs, exp.nodes.seed)
    try:
        for device in ids:
            figures = NodeFigures(device, "device", exp.system)
            process.attach(exp.nodes.apps[device], parents, figures=figures)
        process.wait()
    finally:
        process.close()

"""`fedge serve cloud|edge|device`: one node of a gRPC deployment as a real process.

Every process builds the experiment from the same config (so data partitions, models and
seeds agree) and keeps only its own nodes. The cloud runs the coordinator and writes the
run directory exactly as ``fedge run`` does; edges and devices dial their parents and
answer requests until the cloud says ``shutdown``.

Supported: the FedAvg family (devices attach to the cloud), hierarchical FL (devices to
their edge, edges to the cloud), multi-server FL (edges also attach to their neighbour
edges, which fetch their models through those streams) and the decentralized methods (dfl,
dpmn, dpmn_r, dpmp, dpcg). For those the cloud process runs the round driver (the virtual
node ``sync``) and writes the run; devices fetch their peers' models with calls they start
themselves (``fedge.runtime.grpc.route``), as ``system.d2d.mode`` says: ``relay`` (devices
attach to their edge, edges to the cloud and to the edges of their devices' peers; an edge
passes a device's call to the destination's edge, which passes it down) or ``direct``
(devices attach to the cloud, and each device also listens: it dials every peer and
answers the peers that dial it; certificates name both ends). Every device's peers are its
neighbours in the system model's peer graph, which must be static (``system.mobility =
"static"``): the wall clock of a deployment has no simulated positions. Only the kinds of
``PEER_CALLS`` pass between devices, and only between graph neighbours.
Split learning (split, splitfed, ushaped): edges (the split clients) attach to the cloud and
call its tail app with calls they start (``CLOUD_CALLS``: feature maps up, gradients back);
the cloud process holds the tail and the round driver, and evaluates the full model from
the edge parts the edges return in their messages (its own copy of the head, loaded from
them, and its own tail: no other process's model is read). Devices run no app and get no
process. With several edges, SplitFed and U-shaped train them in parallel for real: the tail
serves their batches in arrival order and U_i weighs by measured wall-clock throughput, so
those runs are not bit-reproducible (vanilla split, and one edge, are).

Interpretations: deadlines are wall-clock seconds here; a device's parents are its home
edge then that edge's neighbours (handover when its edge dies); an edge waits for its home
devices (and neighbour edges) before it dials the cloud, and the cloud for
every edge (or device), so the first round sees the whole federation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedge.algorithms import ALGORITHMS
from fedge.algorithms.decentralized import PEER_CALLS
from fedge.algorithms.split import CLOUD_CALLS
from fedge.core.errors import ConfigError, FedgeError
from fedge.core.message import Message
from fedge.core.node import NodeApp
from fedge.core.transport import SYNC
from fedge.core.update import ModelState
from fedge.experiment.build import Experiment, build
from fedge.experiment.config import ExperimentConfig
from fedge.experiment.engines import set_threads
from fedge.experiment.systems import build_system
from fedge.learning.split import SplitModel
from fedge.results import write_json
from fedge.runtime.grpc.attach import Attachment
from fedge.runtime.grpc.figures import MEASURED_PREFIX as MEASURED
from fedge.runtime.grpc.figures import NodeFigures, modelled_keys
from fedge.runtime.grpc.guard import ModelCheck
from fedge.runtime.grpc.hub import Hub
from fedge.runtime.grpc.node import EdgeState, NodeProcess, shutdown_children
from fedge.runtime.grpc.route import Behind, Reach, Router
from fedge.runtime.grpc.transport import GrpcTransport

log = logging.getLogger("fedge.grpc")
ROLES = ("cloud", "edge", "device")
SUPPORTED_ROLES = {
    (): "devices attach to the cloud",
    ("edge",): "devices -> edges -> cloud",
    ("edge", "exchange"): "devices -> edges -> cloud, and each edge to its neighbour edges",
    ("peer",): "the cloud drives rounds; devices call their peers relayed by edges or direct",
    ("split",): "edges (split clients) -> cloud, and each edge calls the cloud's tail",
}
UNSUPPORTED_ROLES: dict[tuple[str, ...], str] = {}
"""Why a role tuple has no deployment (a reason for the refusal); others get a generic one."""


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
    peer: bool = False
    """A decentralized method: the cloud drives rounds, devices call their graph peers."""
    direct: bool = False
    """Devices dial their peers themselves (``system.d2d.mode = "direct"``), not via edges."""
    graph: dict[str, list[str]] = field(default_factory=dict)
    """Each device's peers in the system model's peer graph (static)."""
    split: bool = False
    """Split learning: edges call the cloud's tail; devices have no process."""

    @staticmethod
    def of(cfg: ExperimentConfig) -> Plan:
        spec = ALGORITHMS.get(cfg.algorithm, "algorithm")
        if spec.roles not in SUPPORTED_ROLES:
            supported = [
                a for a in ALGORITHMS.names() if ALGORITHMS.get(a).roles in SUPPORTED_ROLES
            ]
            why = UNSUPPORTED_ROLES.get(spec.roles, "its roles have no deployment plan")
            raise ConfigError(
                "algorithm",
                cfg.algorithm,
                f"on the grpc engine one of {', '.join(supported)} ({cfg.algorithm}: {why})",
            )
        system = build_system(cfg.system, cfg.seed)
        edges, devices = system.ids("edge"), system.ids("device")
        home = {d: system.attachment(d, 0.0) for d in devices}
        neighbours = {e: list(system.neighbors(e)) for e in edges}
        if spec.roles == ("peer",):
            if cfg.system.mobility != "static":
                raise ConfigError(
                    "system.mobility",
                    cfg.system.mobility,
                    f"'static' for {cfg.algorithm} on the grpc engine (a device's peers come "
                    "from the peer graph, and a deployment's wall clock has no positions)",
                )
            direct = cfg.system.d2d.mode == "direct"
            graph = {d: list(system.peers(d, 0.0)) for d in devices}
            return Plan(not direct, False, edges, devices, home, neighbours, True, direct, graph)
        if spec.roles == ("split",):
            return Plan(True, False, edges, [], {}, neighbours, split=True)
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
        if self.peer:  # the edges route to a device's home: it stays there
            return [home]
        return [home, *self.neighbours.get(home, [])]

    def peers(self, edge: str) -> list[str]:
        """The edges ``edge`` attaches to: its neighbours when they exchange models, the
        edges of its devices' graph peers when it relays their calls (else none)."""
        if self.peer and self.hierarchical:
            ours = [d for d in self.devices if self.home[d] == edge]
            other = {self.home[p] for d in ours for p in self.graph[d]} - {edge}
            return [e for e in self.edges if e in other]
        return list(self.neighbours.get(edge, [])) if self.exchange else []

    def admit(self, node_id: str) -> Callable[[Message, str], str | None]:
        """Which device-to-device calls node ``node_id`` routes: a kind of ``PEER_CALLS``
        between graph neighbours, sent by the source itself or relayed by its home edge
        (and, at a device that peers dial, addressed to that device)."""

        def check(message: Message, came_from: str) -> str | None:
            src, dst = message.src, message.dst
            if self.split:
                return _split_call(message, came_from, self.edges)
            if message.kind not in PEER_CALLS:
                allowed = ", ".join(sorted(PEER_CALLS))
                return f"{src} -> {dst}: {message.kind!r} is not a peer call ({allowed})"
            if dst not in self.graph.get(src, []):
                return f"{src!r} may not call {dst!r}: they are not peers in the system model"
            relayed = self.hierarchical and came_from == self.home.get(src)
            if came_from != src and not relayed:
                return f"{came_from!r} may not send as {src!r}"
            if self.direct and dst != node_id:
                return f"a call for {dst!r} reached {node_id!r}"
            return None

        return check

    def authorize_peer(self, device: str) -> Callable[[str, str], str | None]:
        """Which nodes may dial device ``device`` directly: its graph peers."""
        known = set(self.graph.get(device, []))

        def check(child: str, claimed_tier: str) -> str | None:
            if claimed_tier != "device" or child not in known:
                return f"{child!r} ({claimed_tier}) is not a peer of {device}"
            return None

        return check

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


def _split_call(message: Message, came_from: str, edges: Sequence[str]) -> str | None:
    """Split learning: an edge may call the cloud's tail (``CLOUD_CALLS``) as itself."""
    if message.kind not in CLOUD_CALLS:
        allowed = ", ".join(sorted(CLOUD_CALLS))
        return f"{message.src} -> {message.dst}: {message.kind!r} is not a tail call ({allowed})"
    if came_from != message.src or came_from not in edges:
        return f"{came_from!r} may not send as {message.src!r}"
    if message.dst != "cloud":
        return f"a split client calls only the cloud, not {message.dst!r}"
    return None


def _answering(app: NodeApp, seed: int) -> Callable[[Message], Message]:
    """``app``'s handler for the calls its node answers itself (no downstream)."""

    def handle(message: Message) -> Message:
        return app.handle(message, app.context(seed, message, None))

    return handle


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
    transport.rejoin_s = settings.reattach_s  # a partition does not burn rounds

    def started(run_dir: Path) -> None:
        process.run_id.value = run_dir.name  # children learn it from their first request
        if announce is not None:
            announce(run_dir)

    def attach(exp: Experiment) -> None:
        assert process.hub is not None
        process.hub.check = ModelCheck(_template(exp))
        missing = process.hub.wait_for(plan.children("cloud"), cfg.grpc.connect_timeout_s)
        if missing:
            raise FedgeError(
                f"{len(missing)} nodes did not attach within grpc.connect_timeout_s = "
                f"{cfg.grpc.connect_timeout_s}: {', '.join(missing[:8])}"
            )
        driver = _driver(plan, process.hub, transport, exp.transport.node_id)
        exp.transport = driver  # type: ignore[assignment]
        process.hub.figures = NodeFigures("cloud", "cloud", exp.system)
        if plan.split:  # the edges call the tail: answered by the cloud's own app
            tail = (_answering(exp.nodes.apps["cloud"], exp.nodes.seed), process.own_thread())
            Router("cloud", settings, plan.admit("cloud"), process.hub, local=tail)

    try:
        if resume_dir is not None:
            log.info("cloud: resuming %s from its last checkpoint", resume_dir)
            result = resume_experiment(resume_dir, progress=False, prepare=attach, started=started)
        else:
            result = run_experiment(cfg, out_dir, progress=False, prepare=attach, started=started)
        shutdown_children(transport)
    finally:
        process.close()
    _mark_figures(result.run_dir / "summary.json")
    return result.run_dir


def _template(exp: Experiment) -> ModelState:
    """The parameters this run's messages may carry: the model's, and for split learning its
    edge parts too (the early-exit head under ``exit.``)."""
    parts = getattr(exp.coordinator, "parts", None)
    if isinstance(parts, SplitModel):
        return {**exp.initial_state, **parts.edge_state()}
    return exp.initial_state


def _driver(plan: Plan, hub: Hub, transport: GrpcTransport, node_id: str) -> GrpcTransport:
    """The coordinator's transport: the cloud's own, or for a decentralized method one at
    the round driver that reaches every device (relay: through its home edge)."""
    if not plan.peer:
        return transport
    if plan.hierarchical:
        hub.next_hop = lambda dst: plan.home.get(dst, dst)
    assert node_id == SYNC, node_id
    return GrpcTransport(Behind(hub, {"device": plan.devices}), node_id, plan.nodes())


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
    names: Mapping[str, str] | None = None,
) -> None:
    """Serve one edge until the cloud says shutdown: devices below, the cloud above, and
    (multi-server FL) a stream to each neighbour edge in ``peers`` (id -> address)."""
    plan = Plan.of(cfg)
    _check_ids(plan, "edge", [edge])
    if plan.peer:
        serve_relay(cfg, plan, edge, listen, parents, certs, peers or {}, names)
        return
    if plan.split:
        serve_split_client(cfg, edge, parents, certs, names)
        return
    set_threads(cfg)
    exp = build(_local(cfg))
    app = exp.nodes.apps[edge]
    process = NodeProcess(cfg.grpc, certs, exp.nodes.seed)
    process.check_models(_template(exp))
    figures = NodeFigures(edge, "edge", exp.system)
    try:
        order = [*plan.devices, *plan.edges]
        downstream = process.serve(edge, listen, plan.authorize(edge), order, figures)
        _attach_peers(process, app, plan.peers(edge), peers or {}, figures)
        assert process.hub is not None
        state = EdgeState(state_dir, app)
        # A restarted edge waits for its devices only ``reattach_s`` (as long as the cloud's
        # call waits for the edge): some may have moved to a neighbour edge meanwhile.
        restarted = state.restore()
        patience_s = cfg.grpc.reattach_s if restarted else cfg.grpc.connect_timeout_s
        expected = [*plan.children(edge), *plan.peers(edge)]
        missing = process.hub.wait_for(expected, patience_s)
        if missing:
            log.warning("%s: %s did not attach; going on without them", edge, missing)
        attachment = process.attach(app, parents, downstream, names=names, figures=figures)
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
        address = peers[neighbour]
        process.attach(
            app,
            [address],
            executor=process.own_thread(),
            names={address: neighbour},
            figures=figures,
            reports=False,
        )


def serve_relay(
    cfg: ExperimentConfig,
    plan: Plan,
    edge: str,
    listen: str,
    parents: Sequence[str],
    certs: str | None,
    peers: Mapping[str, str],
    names: Mapping[str, str] | None = None,
) -> None:
    """An edge of a decentralized method: no model of its own, it passes the driver's
    requests down to its devices and relays its devices' calls to their peers (down, or up
    to the peer's edge, to which it attaches as a child)."""
    process = NodeProcess(cfg.grpc, certs, cfg.seed)
    try:
        downstream = process.serve(edge, listen, plan.authorize(edge), plan.devices)
        app = NodeApp(edge, "edge")
        unknown = [n for n in plan.peers(edge) if n not in peers]
        if unknown:
            raise ConfigError("--peer", ", ".join(unknown), "ID=HOST:PORT for every relay edge")
        side = process.own_thread()  # a peer edge's shutdown never waits behind our own
        up = {
            e: process.attach(app, [peers[e]], executor=side, names={peers[e]: e})
            for e in plan.peers(edge)
        }
        router = Router(
            edge,
            cfg.grpc,
            plan.admit(edge),
            process.hub,
            below=lambda dst: plan.home.get(dst) == edge,
            above=lambda dst: up.get(plan.home.get(dst, "")),
        )
        assert process.hub is not None
        expected = [*plan.children(edge), *plan.peers(edge)]
        missing = process.hub.wait_for(expected, cfg.grpc.connect_timeout_s)
        if missing:
            log.warning("%s: %s did not attach; going on without them", edge, missing)
        process.attach(app, parents, downstream, names=names).forward = router.deliver
        process.wait()
    finally:
        process.close()


def serve_split_client(
    cfg: ExperimentConfig,
    edge: str,
    parents: Sequence[str],
    certs: str | None,
    names: Mapping[str, str] | None = None,
) -> None:
    """An edge of split learning: it trains its head on its devices' samples, calling the
    cloud's tail through its own stream for every minibatch (it has no children)."""
    set_threads(cfg)
    exp = build(_local(cfg))
    process = NodeProcess(cfg.grpc, certs, exp.nodes.seed)
    try:
        ways: dict[str, Attachment] = {}
        reach = Reach(edge, process.settings, process.loop, {"cloud": ["cloud"]}, ways.get)
        downstream = GrpcTransport(reach, edge)
        ways["cloud"] = process.attach(exp.nodes.apps[edge], parents, downstream, names=names)
        process.wait()
    finally:
        process.close()


def serve_devices(
    cfg: ExperimentConfig,
    ids: Sequence[str],
    parents: Sequence[str],
    certs: str | None,
    peers: Mapping[str, str] | None = None,
    names: Mapping[str, str] | None = None,
) -> None:
    """Serve devices (one stream and identity each) until their parent says shutdown; a
    decentralized method's devices also reach their peers (``peers``: id -> address of
    every device, for ``system.d2d.mode = "direct"``)."""
    plan = Plan.of(cfg)
    _check_ids(plan, "device", ids)
    set_threads(cfg)
    exp = build(_local(cfg))
    process = NodeProcess(cfg.grpc, certs, exp.nodes.seed)
    process.check_models(_template(exp))
    try:
        if plan.peer:
            _serve_peers(process, plan, exp, ids, parents, peers or {}, names or {})
        else:
            for device in ids:
                figures = NodeFigures(device, "device", exp.system)
                process.attach(exp.nodes.apps[device], parents, names=names, figures=figures)
        process.wait()
    finally:
        process.close()


def _serve_peers(
    process: NodeProcess,
    plan: Plan,
    exp: Experiment,
    ids: Sequence[str],
    parents: Sequence[str],
    peers: Mapping[str, str],
    names: Mapping[str, str],
) -> None:
    """Devices of a decentralized method: the driver's requests on the node's own thread,
    their peers' calls on another (a device waiting for a peer never blocks that peer)."""
    side = process.own_thread()
    if plan.direct:
        wanted = {p for d in ids for p in [d, *plan.graph[d]]}
        unknown = sorted(wanted - set(peers))
        if unknown:
            raise ConfigError(
                "--peer", ", ".join(unknown), "ID=HOST:PORT for every device and its peers"
            )
    for device in ids:
        app, graph = exp.nodes.apps[device], plan.graph[device]
        ways: dict[str, Attachment] = {}
        reach = Reach(device, process.settings, process.loop, {"device": graph}, ways.get)
        downstream = GrpcTransport(reach, device, graph)
        control = process.attach(app, parents, downstream, names=names)
        control.executor_for = lambda m, g=frozenset(graph): side if m.src in g else None
        if not plan.direct:
            ways.update({p: control for p in graph})
            continue
        hub = process.listen(device, peers[device], plan.authorize_peer(device))
        Router(device, process.settings, plan.admit(device), hub, local=(control.handle, side))
        for p in graph:
            dialled = {peers[p]: p}  # the certificate must name the peer, not just its host
            ways[p] = process.attach(app, [peers[p]], downstream, executor=side, names=dialled)

"""Network and process faults for a gRPC deployment on loopback, and a log of how each was
survived.

``LinkProxies`` puts a TCP proxy in front of a listener for every child→parent link, so a
test (or a user rehearsing a deployment) can break the network without killing anything:
``cut`` drops the link's open connections and refuses new ones, ``delay`` adds latency to
every chunk (and optionally caps the bandwidth), ``flap`` cuts and restores it on a
schedule, ``restore`` heals it. The proxy forwards bytes only, so TLS stays end to end: the
child still checks that the certificate it is shown names the parent it meant to reach
(``grpc.ssl_target_name_override``, see ``attach.Attachment``).

``FaultInjector`` plays a list of ``Fault``\\ s against a running ``LocalDeployment`` — link
faults through its proxies, and ``kill -9`` of a device, edge or cloud process followed by a
restart (the cloud with ``--resume``) — one at a time, and writes the fault log: one line
per fault with its time, kind, target and how the deployment survived it, read from the
processes' own logs (``reattach``, ``failover``, ``dormancy``, ``resume``, ``straggler``)
once a further round has completed. Everything listens on loopback and is bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from fedge.core.errors import FedgeError
from fedge.runtime.grpc.settings import LoopThread

READ_BYTES = 1 << 16
FAULTS_LOG = "faults.log"
LINK_KINDS = ("cut_uplink", "cut_downlink", "delay_uplink", "delay_downlink", "flap")
KILL_KINDS = ("kill_device", "kill_edge", "kill_cloud")
KINDS = LINK_KINDS + KILL_KINDS
SURVIVALS = ("reattach", "failover", "dormancy", "resume", "straggler")
MARKERS: dict[str, tuple[str, ...]] = {
    "reattach": (" attached from ",),
    "failover": ("moving to parent",),
    "dormancy": ("rounds alone; resynchronising", "alone"),
    "resume": ("resuming", "restored its state"),
    "straggler": ("missed the deadline", "dropped a late reply"),
}
"""What each survival mechanism writes into the processes' logs (attach, node, hub, ...)."""
REQUIRED = {"kill_device": "reattach", "kill_edge": "resume", "kill_cloud": "resume"}
"""A killed process has survived once it is back: the mechanism that shows it."""


class LinkProxy:
    """A TCP proxy on loopback in front of one listener (runs on a ``LinkProxies`` loop)."""

    def __init__(self, name: str, target: tuple[str, int], baseline_s: float = 0.0) -> None:
        self.name = name
        self.target = target
        self.port = 0
        self.baseline_s = baseline_s
        """The link's own latency (a WAN): what ``restore`` returns to."""
        self.latency_s = baseline_s
        self.rate_bytes_s = 0.0
        self.is_cut = False
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        """Open client connections (pairs of sockets / 2)."""
        return len(self._open) // 2

    async def start(self, host: str) -> int:
        self._server = await asyncio.start_server(self._connection, host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._drop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        self.is_cut = True
        self._drop()

    def restore(self) -> None:
        self.is_cut = False
        self.latency_s, self.rate_bytes_s = self.baseline_s, 0.0

    def _drop(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()  # RST: the peers see the connection die at once
        self._open.clear()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, up_writer}
        self._open |= pair
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        pipes = {
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        }
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._tasks.discard(task)
            for end in pair:
                self._open.discard(end)
                end.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward one direction; each chunk leaves ``latency_s`` after it arrived, in order."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(queue, writer))
        try:
            while data := await reader.read(READ_BYTES):
                queue.put_nowait((time.monotonic() + self.latency_s, data))
            queue.put_nowait(None)
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        while (item := await queue.get()) is not None:
            due_s, data = item
            if (wait_s := due_s - time.monotonic()) > 0:
                await asyncio.sleep(wait_s)
            writer.write(data)
            await writer.drain()
            if self.rate_bytes_s > 0:
                await asyncio.sleep(len(data) / self.rate_bytes_s)


class LinkProxies:
    """Named ``LinkProxy``\\ s on one loop thread; every method is safe from any thread."""

    def __init__(self, host: str = "127.0.0.1", baseline_s: float = 0.0) -> None:
        self.host = host
        self.baseline_s = baseline_s
        """Latency every link has when healthy (0: loopback as it is)."""
        self.links: dict[str, LinkProxy] = {}
        self._loop = LoopThread("fedge-faults")

    def add(self, name: str, target: str) -> str:
        """A proxy ``name`` in front of ``target`` (HOST:PORT); returns the address to dial."""
        if name in self.links:
            return f"{self.host}:{self.links[name].port}"
        host, _, port = target.rpartition(":")
        proxy = LinkProxy(name, (host.strip("[]"), int(port)), self.baseline_s)
        port_bound = self._loop.submit(proxy.start(self.host)).result(timeout=10)
        self.links[name] = proxy
        return f"{self.host}:{port_bound}"

    def _get(self, name: str) -> LinkProxy:
        if name not in self.links:
            raise FedgeError(f"no link {name!r}; allowed: {', '.join(sorted(self.links))}")
        return self.links[name]

    def _on_loop(self, action: Callable[[], None]) -> None:
        async def run() -> None:
            action()

        self._loop.submit(run()).result(timeout=10)

    def cut(self, name: str) -> None:
        """Drop the link's connections and refuse new ones until ``restore``."""
        self._on_loop(self._get(name).cut)

    def restore(self, name: str) -> None:
        """Heal the link: accept connections again, its baseline latency, no bandwidth cap."""
        self._on_loop(self._get(name).restore)

    def delay(self, name: str, latency_s: float, rate_bytes_s: float = 0.0) -> None:
        """Hold every chunk ``latency_s`` (both ways); cap the rate (0: none)."""
        if latency_s < 0 or rate_bytes_s < 0:
            raise FedgeError(f"delay {name}: latency_s and rate_bytes_s must be >= 0")
        proxy = self._get(name)

        def slow() -> None:
            proxy.latency_s, proxy.rate_bytes_s = latency_s, rate_bytes_s

        self._on_loop(slow)

    def flap(self, name: str, period_s: float, duration_s: float) -> Future[None]:
        """Cut and restore the link every ``period_s`` for ``duration_s``, then restore it."""
        proxy = self._get(name)

        async def flapping() -> None:
            finish_s = time.monotonic() + duration_s
            while time.monotonic() < finish_s:
                proxy.cut()
                await asyncio.sleep(period_s)
                proxy.restore()
                await asyncio.sleep(period_s)
            proxy.restore()

        return self._loop.submit(flapping())

    def connections(self, name: str) -> int:
        return self._get(name).connections

    def of(self, child: str) -> list[str]:
        """The links of process ``child`` that carry connections now (its home link when none
        does, e.g. while it reconnects)."""
        mine = [n for n in self.links if n.startswith(f"{child}->")]
        return [n for n in mine if self.links[n].connections] or mine[:1]

    def close(self) -> None:
        async def close_all() -> None:
            for proxy in self.links.values():
                await proxy.close()

        self._loop.submit(close_all()).result(timeout=10)
        self._loop.stop()


@dataclass(frozen=True)
class Fault:
    """One fault: ``kind`` (see ``KINDS``) on ``target`` (a link or process name), lasting
    ``hold_s`` (a kill: the process stays dead that long), ``latency_s`` for delays."""

    kind: str
    target: str
    hold_s: float
    latency_s: float = 0.0


@dataclass(frozen=True)
class FaultRecord:
    """One line of the fault log."""

    at_s: float
    kind: str
    target: str
    hold_s: float
    round_before: int
    round_after: int
    survived_by: tuple[str, ...]
    survived: bool
    """The mechanism the fault calls for showed (``REQUIRED``, else any) and a further
    round completed."""

    def line(self) -> str:
        return json.dumps(asdict(self))


class Processes(Protocol):
    """What the injector needs of a deployment (``LocalDeployment`` has it)."""

    directory: Path
    proxies: LinkProxies | None

    def restart(self, name: str, down_s: float, extra: Sequence[str] = ()) -> None: ...
    def finished(self) -> bool: ...
    def completed_round(self) -> int: ...
    def run_dir(self, timeout_s: float = 0.0) -> Path: ...
    def related(self, name: str) -> list[str]: ...
    def nodes_of(self, name: str, children: bool = False) -> list[str]: ...


class FaultInjector:
    """Plays faults one at a time against a deployment and writes the fault log."""

    def __init__(
        self,
        deployment: Processes,
        faults: Sequence[Fault],
        log_path: Path,
        settle_s: float = 60.0,
        spacing_rounds: int = 0,
        warmup_rounds: int = 2,
    ) -> None:
        if deployment.proxies is None and any(f.kind in LINK_KINDS for f in faults):
            raise FedgeError("link faults need a deployment with proxies (faults=...)")
        unknown = sorted({f.kind for f in faults} - set(KINDS))
        if unknown:
            raise FedgeError(f"fault kinds {unknown}; allowed: {', '.join(KINDS)}")
        self.deployment = deployment
        self.faults = list(faults)
        self.log_path = log_path
        self.settle_s = settle_s
        self.spacing_rounds = spacing_rounds
        self.warmup_rounds = warmup_rounds
        """Rounds the deployment completes before the first fault (processes warm up)."""
        self.records: list[FaultRecord] = []
        self.stopped = threading.Event()
        """Set to stop before the next fault (and end the current wait)."""
        self._started_s = time.monotonic()

    def run(self) -> list[FaultRecord]:
        """Inject every fault, each once the previous one was survived and ``spacing_rounds``
        further rounds completed; returns the log.

        Stops early when the run finishes; a fault whose survival the logs never show is
        logged with an empty ``survived_by``."""
        last_round = self.warmup_rounds - self.spacing_rounds
        for fault in self.faults:
            target = last_round + self.spacing_rounds

            def spaced(target: int = target) -> bool:
                return self._round() >= target

            if not self._until(spaced) or self.stopped.is_set():
                break
            last_round = self.inject(fault).round_after
        return self.records

    def _round(self) -> int:
        return self.deployment.completed_round()

    def _until(self, done: Callable[[], bool]) -> bool:
        """Poll ``done`` up to ``settle_s``; False when the run finished first (or never)."""
        finish_s = time.monotonic() + self.settle_s
        while time.monotonic() < finish_s and not self.stopped.is_set():
            if self.deployment.finished():
                return False
            if done():
                return True
            time.sleep(0.1)
        return False

    def inject(self, fault: Fault) -> FaultRecord:
        """Apply one fault, undo it after ``hold_s``, wait for a further round, log it."""
        offsets = self._offsets(self.deployment.related(fault.target))
        nodes = self.deployment.nodes_of(fault.target, children=fault.kind in KILL_KINDS)
        at_s = time.monotonic() - self._started_s
        before = self._round()
        self._apply(fault)
        survived: tuple[str, ...] = ()

        needed = REQUIRED.get(fault.kind)

        def seen() -> bool:
            nonlocal survived
            survived = self._survivals(offsets, nodes)
            shown = needed in survived if needed else bool(survived)
            return shown and self._round() > before

        ok = self._until(seen)
        after = self._round()
        record = FaultRecord(
            round(at_s, 2), fault.kind, fault.target, fault.hold_s, before, after, survived, ok
        )
        self.records.append(record)
        with self.log_path.open("a") as out:
            out.write(record.line() + "\n")
        return record

    def _apply(self, fault: Fault) -> None:
        proxies = self.deployment.proxies
        if fault.kind in KILL_KINDS:
            resume = ["--resume", str(self.deployment.run_dir())] if fault.target == "cloud" else []
            self.deployment.restart(fault.target, fault.hold_s, resume)
            return
        assert proxies is not None
        links = proxies.of(fault.target)
        if fault.kind == "flap":
            flaps = [proxies.flap(n, fault.hold_s / 6, fault.hold_s) for n in links]
            for flap in flaps:
                flap.result(fault.hold_s + 10)
            return
        for name in links:
            if fault.kind.startswith("cut"):
                proxies.cut(name)
            else:
                proxies.delay(name, fault.latency_s)
        time.sleep(fault.hold_s)
        for name in links:
            proxies.restore(name)

    def _offsets(self, names: Sequence[str]) -> dict[Path, int]:
        """Where the logs of the processes ``names`` end now."""
        paths = [self.deployment.directory / "logs" / f"{name}.log" for name in names]
        return {path: path.stat().st_size if path.exists() else 0 for path in paths}

    def _survivals(self, offsets: dict[Path, int], nodes: Sequence[str]) -> tuple[str, ...]:
        """The survival mechanisms logged since ``offsets`` on lines that name one of
        ``nodes`` (the nodes the fault hit)."""
        named = re.compile(r"\b(" + "|".join(re.escape(n) for n in nodes) + r")\b")
        lines = []
        for path, offset in offsets.items():
            if path.exists():
                with path.open("rb") as f:
                    f.seek(offset)
                    lines += f.read().decode(errors="replace").splitlines()
        about = [line for line in lines if named.search(line)]
        return tuple(s for s in SURVIVALS if any(m in x for x in about for m in MARKERS[s]))

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts per fault kind of each survival mechanism (and of faults)."""
        out: dict[str, dict[str, int]] = {}
        for record in self.records:
            counts = out.setdefault(record.kind, {"faults": 0})
            counts["faults"] += 1
            for how in record.survived_by:
                counts[how] = counts.get(how, 0) + 1
        return out


def mixed_faults(processes: Sequence[str], count: int, seed: int) -> list[Fault]:
    """``count`` faults cycling through every kind, targets drawn with ``seed``.

    ``processes`` are process names (``cloud``, edge ids, ``devices-...``); a link fault's
    target is the child process whose link(s) to its current parent it hits: an edge's
    uplink to the cloud, a device group's downlink from its edge."""
    rng = random.Random(seed)
    edges = [p for p in processes if p != "cloud" and not p.startswith("devices-")]
    groups = [p for p in processes if p.startswith("devices-")]
    pools = {
        "cut_uplink": edges,
        "cut_downlink": groups,
        "delay_uplink": edges,
        "delay_downlink": groups,
        "flap": edges + groups,
        "kill_device": groups,
        "kill_edge": edges,
        "kill_cloud": ["cloud"] if "cloud" in processes else [],
    }
    kinds = [k for k in CYCLE if pools[k]]
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        out.append(Fault(kind, rng.choice(pools[kind]), *_timing(kind, i // len(kinds))))
    return out


CYCLE = (
    *("cut_uplink", "cut_downlink", "kill_device", "flap", "delay_uplink"),
    *("kill_edge", "cut_uplink", "cut_downlink", "delay_downlink", "kill_cloud"),
)
"""The order ``mixed_faults`` draws kinds in: every kind, cuts twice as often."""


def _timing(kind: str, repeat: int) -> tuple[float, float]:
    """(hold_s, latency_s) of the ``repeat``-th fault of ``kind``: short cuts (reattach)
    alternate with long ones (failover,
    dormancy); a delayed chunk arrives 22 s late, so a call misses a deadline of 20 s."""
    if kind.startswith("cut"):
        return (1.0 if repeat % 2 == 0 else 5.0), 0.0
    if kind.startswith("delay"):
        return 4.0, 22.0
    if kind == "flap":
        return 3.0, 0.0
    return 1.0, 0.0

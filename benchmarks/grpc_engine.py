"""The gRPC engine measured in one run: transfer throughput, per-round overhead, 1,000 devices.

Three parts, each bounded in time, all on loopback with TLS:

* ``transfer``: a model of ``--model-mb`` MB sent to a device process and echoed back
  over the chunked Attach stream, against a plain in-memory copy of the same bytes
  (``bytes(bytearray(...))``) and against the fedge codec alone (encode + decode).
* ``rounds``: the quickstart (Fashion-MNIST, FedAvg, 10 devices a round, 5 local steps so
  the overhead is not buried in training) for ``--rounds`` rounds with 10 and 100 devices,
  on the local engine and as a ``deploy-local`` deployment; the per-round wall time is the
  median of the rounds after the first (which includes the wait for attachments on gRPC).
  Evaluation is in both.
* ``connections``: one edge hub in this process holding 1,000 device streams opened by
  a second process; reports the time until all attached, one round trip to all 1,000,
  and this process's peak RSS.

Run from the repo root::

    .venv/bin/python benchmarks/grpc_engine.py                 # all three, ~5 minutes
    .venv/bin/python benchmarks/grpc_engine.py --part transfer --model-mb 100
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fedge.core.message import Message
from fedge.core.node import NodeApp, NodeContext
from fedge.deploy.local import deploy_local
from fedge.experiment.config import load_config
from fedge.results import read_rows_csv
from fedge.runs.run import run_experiment
from fedge.runtime.grpc.node import NodeProcess
from fedge.runtime.grpc.settings import GrpcSettings
from fedge.runtime.grpc.tls import make_certs

CONFIG = "examples/quickstart.toml"


def _echo(message: Message, ctx: NodeContext) -> Message:
    return message.reply("echo", dict(message.payload))


def _ack(message: Message, ctx: NodeContext) -> Message:
    return message.reply("ack", {"n": 1})


def _devices(
    address: str, certs: str, ids: list[str], seconds: float, chunk_bytes: int = 1 << 20
) -> None:
    """Child process: attach ``ids`` to ``address`` and serve until shut down."""
    settings = GrpcSettings(connect_timeout_s=120.0, chunk_bytes=chunk_bytes)
    process = NodeProcess(settings, certs, seed=0)
    for node in ids:
        process.attach(NodeApp(node, "device", {"echo": _echo, "ack": _ack}), [address])
    process.wait(seconds)
    process.close()


def _spawn(
    address: str, certs: str, ids: list[str], seconds: float, chunk_bytes: int = 1 << 20
) -> subprocess.Popen[bytes]:
    code = (
        "import sys, json; sys.path.insert(0, 'benchmarks'); import grpc_engine as g; "
        f"g._devices({address!r}, {certs!r}, json.loads(sys.argv[1]), {seconds}, {chunk_bytes})"
    )
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(ids)])


def _hub(certs: str, ids: list[str], settings: GrpcSettings) -> tuple[NodeProcess, Any]:
    process = NodeProcess(settings, certs, seed=0)
    transport = process.serve("edge0", "127.0.0.1:0", lambda node, tier: None, ids)
    return process, transport


def transfer(model_mb: float, repeats: int, certs: str, chunk_bytes: int) -> dict[str, float]:
    x = torch.randn(int(model_mb * 2**20 / 4))
    message = Message("edge0", "d0", "echo", 1, {"state": {"w": x}})
    nbytes = message.nbytes()
    settings = GrpcSettings(max_message_bytes=4 * nbytes, chunk_bytes=chunk_bytes)
    process, transport = _hub(certs, ["d0"], settings)
    child = _spawn(f"localhost:{process.port}", certs, ["d0"], 600, chunk_bytes)
    try:
        assert process.hub is not None and process.hub.wait_for(["d0"], 60.0) == []
        transport.send([message])  # warm-up
        grpc_s = _best(lambda: transport.send([message]), repeats) / 2  # one way
        data = message.encode()
        copy_s = _best(lambda: bytes(bytearray(data)), repeats)
        codec_s = _best(lambda: Message.decode(message.encode()), repeats)
        # CPU seconds (both processes, every thread) barely move with other load
        cpu_start = time.process_time(), _cpu_s(child.pid)
        for _ in range(repeats):
            transport.send([message])
        grpc_cpu_s = (time.process_time() - cpu_start[0] + _cpu_s(child.pid) - cpu_start[1]) / (
            2 * repeats
        )
        cpu_start_s = time.process_time()
        for _ in range(repeats):
            bytes(bytearray(data))
        copy_cpu_s = (time.process_time() - cpu_start_s) / repeats
    finally:
        transport.send([Message("edge0", "d0", "shutdown")], 10.0)
        child.wait(30)
        process.close()
    mb = nbytes / 2**20
    return {
        "model_mb": mb,
        "chunk_bytes": chunk_bytes,
        "grpc_mb_per_s": mb / grpc_s,
        "memcopy_mb_per_s": mb / copy_s,
        "codec_mb_per_s": mb / codec_s,
        "grpc_over_memcopy_time": grpc_s / copy_s,
        "grpc_over_codec_time": grpc_s / codec_s,
        "grpc_cpu_mb_per_s": mb / grpc_cpu_s,
        "memcopy_cpu_mb_per_s": mb / copy_cpu_s,
        "grpc_over_memcopy_cpu": grpc_cpu_s / copy_cpu_s,
    }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _best(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _round_s(run_dir: Path) -> float:
    wall = [float(r["wall_time_s"]) for r in read_rows_csv(run_dir / "metrics.csv")]
    return statistics.median(b - a for a, b in itertools.pairwise(wall))


def rounds(devices: int, n_rounds: int, out: Path) -> dict[str, float]:
    overrides = [
        f"rounds={n_rounds}",
        f"system.devices={devices}",
        "federation.clients_per_round=10",
        "threads=1",
        "training.steps=5",
        "data.test_limit=2000",
        "output.plots=false",
        "output.progress=false",
        f"output.dir={json.dumps(str(out))}",
        f"output.store={json.dumps(str(out / 'fedge.sqlite'))}",
    ]
    cfg = load_config(CONFIG, overrides)
    local = run_experiment(cfg)
    deployed_dir, _summary = deploy_local(cfg, out)
    local_s, grpc_s = _round_s(local.run_dir), _round_s(deployed_dir)
    return {"devices": devices, "local_round_s": local_s, "grpc_round_s": grpc_s,
            "grpc_over_local": grpc_s / local_s}  # fmt: skip


def connections(n: int, certs: str) -> dict[str, float]:
    ids = [f"d{i}" for i in range(n)]
    process, transport = _hub(certs, ids, GrpcSettings(connect_timeout_s=120.0))
    start = time.perf_counter()
    child = _spawn(f"localhost:{process.port}", certs, ids, 600)
    try:
        assert process.hub is not None
        missing = process.hub.wait_for(ids, 120.0)
        attach_s = time.perf_counter() - start
        start = time.perf_counter()
        replies = transport.send([Message("edge0", d, "ack", 1) for d in ids], 60.0)
        round_trip_s = time.perf_counter() - start
    finally:
        transport.send([Message("edge0", d, "shutdown") for d in transport.nodes("device")], 30)
        child.wait(60)
        process.close()
    return {
        "connections": n,
        "attached": n - len(missing),
        "attach_all_s": attach_s,
        "round_trip_all_s": round_trip_s,
        "replies": len(replies),
        "edge_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _quickstart_state() -> dict[str, torch.Tensor]:
    """The quickstart's model (the FedAvg CNN on 28x28 images, 10 classes): about 6.6 MB."""
    from fedge.learning.models import build_model

    model = build_model("fedavg_cnn", (1, 28, 28), 10)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def broadcast(
    n: int, certs: str, processes: int, n_rounds: int, chunk_bytes: int
) -> dict[str, float]:
    """One edge sends the quickstart model to ``n`` TLS device streams (opened by
    ``processes`` other processes) and collects their acknowledgements, ``n_rounds`` times.

    The messages share the model's tensors, as a coordinator's broadcast does."""
    ids = [f"d{i}" for i in range(n)]
    state = _quickstart_state()
    model_bytes = Message("edge0", ids[0], "ack", 1, {"state": state}).nbytes()
    settings = GrpcSettings(connect_timeout_s=300.0, call_timeout_s=600.0, chunk_bytes=chunk_bytes)
    process, transport = _hub(certs, ids, settings)
    share = -(-n // processes)
    children = [
        _spawn(f"localhost:{process.port}", certs, ids[i : i + share], 1200, chunk_bytes)
        for i in range(0, n, share)
    ]
    times = []
    try:
        assert process.hub is not None
        missing = process.hub.wait_for(ids, 300.0)
        for r in range(n_rounds):
            batch = [Message("edge0", d, "ack", r + 1, {"state": state}) for d in ids]
            start = time.perf_counter()
            replies = transport.send(batch, 600.0)
            times.append(time.perf_counter() - start)
    finally:
        transport.send([Message("edge0", d, "shutdown") for d in transport.nodes("device")], 60)
        for child in children:
            child.wait(120)
        process.close()
    return {
        "connections": n,
        "attached": n - len(missing),
        "chunk_bytes": chunk_bytes,
        "model_mb": model_bytes / 2**20,
        "round_s": statistics.median(times),
        "rounds": n_rounds,
        "replies": len(replies),
        "edge_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--part", choices=("all", "transfer", "rounds", "connections", "broadcast"), default="all"
    )
    p.add_argument("--model-mb", type=float, default=45.0, help="about ResNet-18's size")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--device-processes", type=int, default=4)
    p.add_argument("--broadcast-rounds", type=int, default=2)
    p.add_argument("--chunk-bytes", type=int, default=GrpcSettings().chunk_bytes)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        nodes = ["edge0", *(f"d{i}" for i in range(max(args.connections, 1)))]
        certs = str(make_certs(Path(tmp) / "certs", nodes))
        if args.part in ("all", "transfer"):
            result = transfer(args.model_mb, args.repeats, certs, args.chunk_bytes)
            print(json.dumps({"transfer": result}))
        if args.part in ("all", "rounds"):
            for devices in (10, 100):
                result = rounds(devices, args.rounds, Path(tmp) / f"r{devices}")
                print(json.dumps({"rounds": result}))
        if args.part in ("all", "connections"):
            print(json.dumps({"connections": connections(args.connections, certs)}))
        if args.part in ("all", "broadcast"):
            result = broadcast(
                args.connections,
                certs,
                args.device_processes,
                args.broadcast_rounds,
                args.chunk_bytes,
            )
            print(json.dumps({"broadcast": result}))


if __name__ == "__main__":
    main()

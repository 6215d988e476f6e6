"""Helpers for tests that run real gRPC deployments on loopback (bounded in time)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from conftest import TINY
from fedge.algorithms.base import History
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.runs.checkpoint import CHECKPOINT_NAME, read_checkpoint_header
from fedge.runtime import LocalTransport
from fedge.runtime.grpc.settings import GrpcSettings
from fedge.runtime.simulated import visible_nodes

GRPC_FAST = """
[grpc]
connect_timeout_s = 60.0
call_timeout_s = 60.0
retry_initial_s = 0.05
retry_max_s = 0.5
reattach_s = 3.0
dormant_after_s = 0.0
"""


def deploy_config(tmp_path: Path, extra: str = "", name: str = "deploy.toml") -> Path:
    """The tiny digits config with one torch thread, short gRPC timeouts and ``extra``."""
    runs = tmp_path / "runs"
    text = TINY.replace('name = "tiny"', 'name = "tiny"\nthreads = 1')
    text += f'dir = "{runs.as_posix()}"\nstore = "{(runs / "fedge.sqlite").as_posix()}"\n'
    path = tmp_path / name
    path.write_text(text + GRPC_FAST + extra)
    return path


FAST_GRPC = GrpcSettings(
    chunk_bytes=4096,
    max_message_bytes=1 << 20,
    call_timeout_s=20.0,
    connect_timeout_s=5.0,
    retry_initial_s=0.05,
    retry_max_s=0.2,
    reattach_s=1.0,
)
"""gRPC settings for tests on loopback: small chunks, quick retries and reattachment."""


def in_process_history(config: Path, overrides: list[str]) -> History:
    """The run with every node in this process on the cost-free transport, delivered in send
    order: the reference every engine must reproduce."""
    cfg = load_config(config, overrides)
    torch.set_num_threads(cfg.threads)  # as run_experiment does: float sums depend on it
    exp = build(cfg)
    system = exp.system
    transport = LocalTransport(
        exp.nodes,
        lambda at, tier, t_s: visible_nodes(system, at, tier, 0.0),
        exp.transport.node_id,
    )
    return exp.coordinator.run(transport, exp.initial_state, exp.rng, cfg.rounds)


def same_value(a: float, b: float) -> bool:
    """Equal, NaN included (a metric that is NaN on every engine agrees)."""
    return a == b or (math.isnan(a) and math.isnan(b))


def final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(run_dir / "model.pt", weights_only=True)
    return state


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def wait_for(predicate, timeout_s: float, what: str, step_s: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    finish_s = time.monotonic() + timeout_s
    while time.monotonic() < finish_s:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def checkpoint_round(run_dir: Path) -> int:
    """The last round the cloud checkpointed (0 before the first)."""
    path = run_dir / CHECKPOINT_NAME
    return int(read_checkpoint_header(path)["round"]) if path.exists() else 0

"""Secure-aggregation cost per round against cohort size and dropout, and the Paillier cost.

Runs the real message-level protocol (``fedge.algorithms.secure`` inside ``FedAvg.round``)
over the in-process transport, with devices whose "training" returns a fixed random update
of ``--dim`` entries, so what is measured is the protocol alone: the encoded bytes of every
message (``Message.nbytes()``, what the simulated clock charges) and the CPU time of the
whole round in one process (every device's and the server's work, one after another;
process time, so other load on the machine does not inflate it).

    .venv/bin/python examples/privacy/secagg_table.py                 # the README's table
    .venv/bin/python examples/privacy/secagg_table.py --dim 1048576   # Bonawitz's 2^20 entries
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from fedge.aggregation import paillier as he
from fedge.aggregation import secagg as sa
from fedge.algorithms import FedAvg
from fedge.algorithms.secure import SecAggDevice, SecureAggregation, install_device
from fedge.algorithms.secure_settings import SecureAggregationSettings, scale_bits_for
from fedge.core.errors import FedgeError
from fedge.core.message import Message
from fedge.core.node import NodeApp, NodeContext
from fedge.core.update import Update
from fedge.runtime import LocalTransport, NodeSet
from fedge.runtime.local import flat_membership

WEIGHT = 100.0
"""Every device's sample count (its FedAvg weight)."""


def _trainer(dim: int, seed: int) -> Callable[[Message, NodeContext], Message]:
    update = {"w": torch.from_numpy(np.random.default_rng(seed).normal(0, 0.01, dim)).float()}

    def train(message: Message, ctx: NodeContext) -> Message:
        out = Update(update, WEIGHT, kind="delta", metrics={"train_loss": 1.0}, origin=ctx.node_id)
        return message.reply("update", {"update": out})

    return train


def _federation(
    n: int, dim: int, settings: SecureAggregationSettings | None
) -> tuple[FedAvg, LocalTransport, dict[str, list[int]]]:
    ids = [f"dev{i:03d}" for i in range(n)]
    device = SecAggDevice()
    apps = {}
    for i, d in enumerate(ids):
        app = NodeApp(d, "device", {"train": _trainer(dim, i)})
        if settings is not None:
            install_device(app, device)
            app.use(device.mask)
        apps[d] = app
    nodes = NodeSet(apps, seed=0)
    sizes: dict[str, list[int]] = defaultdict(list)
    deliver = nodes.deliver

    def recording(message: Message, downstream: Any) -> Any:
        reply, work = deliver(message, downstream)
        sizes[f"down/{message.kind}"].append(message.nbytes())
        sizes[f"up/{message.kind}"].append(reply.nbytes())
        return reply, work

    nodes.deliver = recording  # type: ignore[method-assign]
    transport = LocalTransport(nodes, flat_membership({"device": ids}))
    secure = None
    if settings is not None:
        scale = scale_bits_for(settings, n, WEIGHT)
        secure = SecureAggregation(settings, scale, seed=1)
    return FedAvg(clients_per_round=n, secure=secure), transport, sizes


def _bytes(sizes: dict[str, list[int]], way: str) -> float:
    return float(sum(sum(v) for k, v in sizes.items() if k.startswith(way)))


def secagg_row(
    n: int, dim: int, dropout: float, mode: str, threshold: float, degree: int = 0
) -> dict[str, Any]:
    """One round of ``mode`` over ``n`` devices; bytes per device and the round's time."""
    reference = {"w": torch.zeros(dim)}
    algo, transport, plain_sizes = _federation(n, dim, None)
    algo.round(transport, reference, np.random.default_rng(0), 1)
    settings = SecureAggregationSettings(
        enabled=True,
        mode=mode,
        dropout_after_masking=dropout,
        bits=32,
        threshold=threshold,
        degree=degree if mode == "secagg+" else 0,
    )
    algo, transport, sizes = _federation(n, dim, settings)
    start = time.process_time()
    try:
        _, metrics, _ = algo.round(transport, reference, np.random.default_rng(0), 1)
        status = "ok"
    except FedgeError as exc:
        metrics, status = {}, "failed: " + str(exc).split(": ", 1)[-1][:60]
    cpu = time.process_time() - start
    plain_up = _bytes(plain_sizes, "up/") / n
    up = _bytes(sizes, "up/") / n
    down_extra = (_bytes(sizes, "down/") - _bytes(plain_sizes, "down/")) / n
    return {
        "mode": mode,
        "n": n,
        "dropout": dropout,
        "up_kb": up / 1e3,
        "extra_down_kb": down_extra / 1e3,
        "expansion_fp32": (up + down_extra) / plain_up,
        "expansion_16bit": (up + down_extra) / (2 * dim),
        "cpu_s": cpu,
        "threshold": threshold,
        "status": status,
        "recovered": metrics.get("secagg_dropped_after_masking", float("nan")),
    }


def paillier_row(n: int, dim: int, key_bits: int, bits: int = 32) -> dict[str, Any]:
    """Encrypt (per device), aggregate and decrypt times and ciphertext bytes, measured."""
    public, private = he.keypair(key_bits)
    pack = he.packing(public.n.bit_length(), bits, n)
    fp = sa.FixedPoint(bits, scale_bits_for(SecureAggregationSettings(bits=bits), n, WEIGHT), 8.0)
    rng = np.random.default_rng(0)
    vectors = [fp.encode(rng.normal(0, 0.01, dim), WEIGHT)[0] for _ in range(n)]
    start = time.process_time()
    encrypted = [he.encrypt_vector(public, z, pack) for z in vectors]
    encrypt_s = (time.process_time() - start) / n
    start = time.process_time()
    total = he.add_encrypted(public, encrypted)
    aggregate_s = time.process_time() - start
    start = time.process_time()
    got = he.decrypt_vector(private, total, pack, dim)
    decrypt_s = time.process_time() - start
    assert np.array_equal(got, sa.ring_sum(vectors, bits)), "the HE sum must equal the ring sum"
    cbytes = len(encrypted[0]) * he.ciphertext_bytes(public)
    return {
        "key_bits": key_bits,
        "n": n,
        "dim": dim,
        "ciphertexts": len(encrypted[0]),
        "ct_kb": cbytes / 1e3,
        "expansion_fp32": cbytes / (4 * dim),
        "encrypt_s": encrypt_s,
        "aggregate_s": aggregate_s,
        "decrypt_s": decrypt_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=10_000, help="update entries (model size)")
    parser.add_argument("--cohorts", default="10,50,100,200")
    parser.add_argument("--dropouts", default="0,0.1,0.3")
    parser.add_argument("--he-dim", type=int, default=650, help="entries for Paillier")
    parser.add_argument("--he-n", type=int, default=10)
    parser.add_argument("--he-keys", default="1024,2048", help="Paillier key sizes; '' skips")
    parser.add_argument(
        "--modes",
        default="secagg:2/3,secagg+:2/3,secagg+:0.55",
        help="mode:threshold[:degree] entries (threshold a decimal or a fraction such as 2/3; "
        "degree 0: automatic)",
    )
    args = parser.parse_args()
    print(f"secure aggregation, {args.dim} entries, 32-bit ring, weight {WEIGHT:g} a device\n")
    print(
        "| mode | threshold | n | dropout | up per device (kB) | extra down per device (kB) | "
        "expansion vs fp32 | expansion vs 16-bit | round CPU (s) | recovered | status |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for entry in args.modes.split(","):
        mode, threshold, degree = [*entry.split(":"), "0"][:3]
        for n in (int(x) for x in args.cohorts.split(",")):
            for dropout in (float(x) for x in args.dropouts.split(",")):
                share = float(Fraction(threshold))
                row = secagg_row(n, args.dim, dropout, mode, share, int(degree))
                print(
                    f"| {row['mode']} | {share:.2f} | {n} | {dropout:.0%} | "
                    f"{row['up_kb']:.1f} | {row['extra_down_kb']:.1f} | "
                    f"{row['expansion_fp32']:.3f} | {row['expansion_16bit']:.2f} | "
                    f"{row['cpu_s']:.2f} | {row['recovered']:.0f} | {row['status']} |",
                    flush=True,
                )
    if not args.he_keys:
        return
    print(f"\nPaillier (phe), {args.he_n} devices, {args.he_dim} entries, 32-bit ring, packed\n")
    print(
        "| key bits | ciphertexts a device | ciphertext kB a device | expansion vs fp32 | "
        "encrypt s a device | aggregate s | decrypt s |"
    )
    print("|---|---|---|---|---|---|---|")
    for key_bits in (int(x) for x in args.he_keys.split(",")):
        row = paillier_row(args.he_n, args.he_dim, key_bits)
        print(
            f"| {key_bits} | {row['ciphertexts']} | {row['ct_kb']:.1f} | "
            f"{row['expansion_fp32']:.2f} | {row['encrypt_s']:.2f} | "
            f"{row['aggregate_s']:.4f} | {row['decrypt_s']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

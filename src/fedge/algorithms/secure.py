"""Secure aggregation as messages: the device side (handlers and the masking middleware) and
the server side that a FedAvg round uses in place of collect-and-average.

The four stages of Bonawitz et al. (CCS 2017), each one exchange of real ``Message``s, so the
simulated transport charges their exact encoded bytes and their time, and the gRPC engine
carries them between processes:

0. ``secagg_keys``: every selected device makes two X25519 key pairs (c: share encryption,
   s: masks) and sends its public keys. Answering devices: U1.
1. ``secagg_share``: the server sends each device the public keys of its share-holders (the
   cohort for SecAgg; for SecAgg+ the device's neighbours in a random Harary graph of degree
   k = O(log n), Bell et al. 2020). The device draws its self-mask seed b, Shamir-shares b and
   its mask private key s_sk (threshold t) among them, and returns each share encrypted with
   AES-GCM under the key it agreed with the holder; the server only routes them. U2.
2. ``train``: the usual training request, plus the ciphertexts addressed to the device and
   its neighbours in U2. The device trains; the masking middleware (last on the reply, after
   any compression) turns the update into its delta from the received model, appends the
   entries 1 and the training loss, clips every entry to [-clip, clip], multiplies by the
   device's weight (its sample count) and encodes it in fixed point, then adds its self mask
   PRG(b) and ±PRG(s_uv) for every neighbour v in U2. U3 (on time, within ``deadline_s``).
3. ``secagg_unmask``: the server names the survivors (U3) and the dropped (U2 minus U3); each
   device returns its shares of the survivors' b and of the dropped devices' s_sk — never
   both for one device. With t shares of each, the server removes the self masks and the
   masks survivors shared with dropped devices; what is left is Σ w·x, Σ w and Σ w·loss.

The server learns only those sums: the weighted mean update (Σ w·Δ / Σ w, weighted FedAvg),
the total weight and the weighted mean training loss; individual updates, weights and losses
stay hidden. Fewer than t answers at any stage, or fewer than t share-holders of one secret,
fail the round with a ``SecAggError`` naming the threshold and the survivors.

Threat model: honest-but-curious server and devices, as Bonawitz's semi-honest protocol
(no signatures, no consistency-check round). A device that moves to another edge during a
round is treated as a dropout (``federation.handover = false``).
Compression: masks are dense over the ring, so the masked update travels dense at the
ring's width per entry whatever the compressor did (the decompressed update is masked).
The crypto's compute time on devices is not charged on the simulated clock (its bytes are).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedge.aggregation import secagg as sa
from fedge.aggregation.pipeline import Aggregate
from fedge.algorithms.secure_settings import (
    SecureAggregationSettings,
    SecureRequest,
    threshold_of,
)
from fedge.core.message import Message
from fedge.core.node import NodeApp, NodeContext, derive_seed
from fedge.core.transport import Transport
from fedge.core.update import ModelState, Update, delta, flatten, float_keys, unflatten
from fedge.transforms.pipeline import reference_model

STAGES = ("secagg_keys", "secagg_share", "train", "secagg_unmask")
TAIL = 2
"""Entries appended to the update vector: 1 (sums to Σ w) and the training loss."""


def as_u8(data: bytes | Sequence[bytes]) -> torch.Tensor:
    """Bytes (or equal-length byte strings, one per row) as a uint8 tensor."""
    if isinstance(data, bytes):
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if not data:
        return torch.zeros((0, 0), dtype=torch.uint8)
    flat = torch.frombuffer(bytearray(b"".join(data)), dtype=torch.uint8)
    return flat.reshape(len(data), -1)


def byte_rows(t: torch.Tensor) -> list[bytes]:
    return [bytes(row.numpy().tobytes()) for row in t.reshape(t.shape[0], -1)]


def _aad(r: int, src: str, dst: str) -> bytes:
    return f"fedge-secagg|{r}|{src}|{dst}".encode()


# --------------------------------------------------------------------------- devices


class SecAggDevice:
    """The device side: handlers for stages 0, 1 and 3 and the masking middleware (stage 2).

    The round's secrets live in the node's state under ``secagg`` as raw bytes, and are
    dropped when the device answers the unmasking stage."""

    def keys(self, message: Message, ctx: NodeContext) -> Message:
        c, s = sa.generate_keypair(), sa.generate_keypair()
        ctx.state["secagg"] = {"round": message.round, "c": c, "s": s}
        return message.reply("secagg_keys", {"keys": as_u8(c.public + s.public)})

    def share(self, message: Message, ctx: NodeContext) -> Message:
        mine = self._mine(message, ctx)
        p = message.payload
        ids: list[str] = list(p["ids"])
        points = dict(zip(ids, (int(x) for x in p["points"]), strict=True))
        keys = dict(zip(ids, byte_rows(p["keys"]), strict=True))
        b = sa.new_seed()
        t = int(p["t"])
        s_shares = sa.shamir_split(sa.secret_int(mine["s"].private), list(points.values()), t)
        b_shares = sa.shamir_split(sa.secret_int(b), list(points.values()), t)
        mine.update(b=b, keys=keys, held={}, points=points, t=t)
        to, blobs = [], []
        for v in ids:
            plain = sa.share_bytes(s_shares[points[v]]) + sa.share_bytes(b_shares[points[v]])
            if v == ctx.node_id:
                mine["held"][v] = plain
                continue
            key = sa.agree(mine["c"].private, keys[v][: sa.KEY_BYTES], "share")
            to.append(v)
            blobs.append(sa.encrypt(key, plain, _aad(message.round, ctx.node_id, v)))
        return message.reply("secagg_shares", {"to": to, "ct": as_u8(blobs)})

    @staticmethod
    def _mine(message: Message, ctx: NodeContext) -> dict[str, Any]:
        mine: dict[str, Any] | None = ctx.state.get("secagg")
        if mine is None or mine["round"] != message.round:
            raise sa.SecAggError(
                f"{ctx.node_id}: {message.kind} for round {message.round} without its keys"
            )
        return mine

    def mask(self, request: Message, reply: Message, ctx: NodeContext) -> Message:
        """Middleware: mask the update of a secure ``train`` reply (a no-op otherwise)."""
        plan = request.payload.get("secagg")
        if request.kind != "train" or plan is None or "update" not in reply.payload:
            return reply
        mine = self._mine(request, ctx)
        for src, blob in zip(plan["from"], byte_rows(plan["ct"]), strict=True):
            key = sa.agree(mine["c"].private, mine["keys"][src][: sa.KEY_BYTES], "share")
            mine["held"][src] = sa.decrypt(key, blob, _aad(request.round, src, ctx.node_id))
        fp = sa.FixedPoint(int(plan["bits"]), int(plan["scale_bits"]), float(plan["clip"]))
        update: Update = reply.payload["update"]
        z, _clipped = fp.encode(update_vector(update, reference_model(request)), update.weight)
        pairs = {
            v: sa.agree(mine["s"].private, mine["keys"][v][sa.KEY_BYTES :], "mask")
            for v in plan["peers"]
        }
        y = sa.mask_input(z, mine["b"], pairs, ctx.node_id, fp.bits)
        masked = Update(
            {"masked": torch.from_numpy(sa.to_wire(y, fp.bits))},
            kind="delta",
            origin=update.origin,
            round=update.round,
        )
        payload = {**reply.payload, "update": masked}
        return Message(reply.src, reply.dst, reply.kind, reply.round, payload)

    def unmask(self, message: Message, ctx: NodeContext) -> Message:
        mine = self._mine(message, ctx)
        survivors, dropped = list(message.payload["survivors"]), list(message.payload["dropped"])
        if set(survivors) & set(dropped):
            raise sa.SecAggError(f"{ctx.node_id}: asked for both secrets of a device")
        held: dict[str, bytes] = mine["held"]
        if sum(v in held for v in survivors) < mine["t"]:  # Bonawitz: refuse below t
            raise sa.SecAggError(
                f"{ctx.node_id}: only {len(survivors)} survivors named, below t={mine['t']}"
            )
        half = sa.SHARE_BYTES
        b_from = [v for v in survivors if v in held]
        s_from = [v for v in dropped if v in held]
        out = {
            "b_from": b_from,
            "b": as_u8([held[v][half:] for v in b_from]),
            "s_from": s_from,
            "s": as_u8([held[v][:half] for v in s_from]),
        }
        ctx.state.pop("secagg", None)
        return message.reply("secagg_unmasked", out)


def update_vector(update: Update, reference: ModelState | None) -> np.ndarray:
    """The update's delta from the model the request carried, then 1 and its loss."""
    state = update.state
    if update.kind == "state" and reference is not None:
        state = delta(state, reference)
    x = flatten(state).numpy()
    loss = float(update.metrics.get("train_loss", 0.0))
    return np.concatenate([x, [1.0, loss if math.isfinite(loss) else 0.0]])


def install_device(app: NodeApp, device: SecAggDevice) -> None:
    """Give a device app the handlers of stages 0, 1 and 3 (the masking runs as middleware,
    installed last by ``build`` through ``Assembly.finish``)."""
    app.on("secagg_keys", device.keys)
    app.on("secagg_share", device.share)
    app.on("secagg_unmask", device.unmask)


# --------------------------------------------------------------------------- server


@dataclass
class Cohort:
    """One round's membership: who holds whose shares and who is still in."""

    selected: list[str]
    neighbours: dict[str, set[str]]
    t: int
    points: dict[str, int] = field(default_factory=dict)

    def holders(self, u: str, alive: Sequence[str]) -> list[str]:
        """u's share-holders (its neighbours and itself) among ``alive``, in cohort order."""
        keep = self.neighbours[u] | {u}
        return [v for v in self.selected if v in keep and v in alive]


@dataclass
class SecureAggregation:
    """The server side of one secure-aggregation round (the stages above)."""

    settings: SecureAggregationSettings
    scale_bits: int
    seed: int
    last: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def empty_metrics() -> dict[str, float]:
        """The protocol's metrics of a round without devices."""
        return {"secagg_dropped_before_masking": 0.0, "secagg_dropped_after_masking": 0.0}

    def cohort(self, chosen: Sequence[str], rng: np.random.Generator) -> Cohort:
        n = len(chosen)
        if self.settings.mode == "secagg+":
            degree = self.settings.degree or sa.default_degree(n)
            graph = sa.harary_neighbours(list(chosen), degree, rng)
            size = min(degree, n - 1) + 1
        else:
            graph = {u: {v for v in chosen if v != u} for u in chosen}
            size = n
        points = {u: i + 1 for i, u in enumerate(chosen)}
        return Cohort(list(chosen), graph, threshold_of(self.settings, size), points)

    def fail_below(self, stage: str, cohort: Cohort, alive: Sequence[str], where: str) -> None:
        """Every device in ``alive`` must keep t share-holders among ``alive``."""
        for u in alive:
            got = len(cohort.holders(u, alive))
            if got < cohort.t:
                raise sa.SecAggError(
                    f"secure aggregation failed at {where}, stage {stage}: device {u} has "
                    f"{got} share-holders left, below the threshold t={cohort.t} "
                    f"(survivors: {len(alive)} of {len(cohort.selected)} selected)"
                )
        if not alive:
            raise sa.SecAggError(
                f"secure aggregation failed at {where}, stage {stage}: no device answered "
                f"(threshold t={cohort.t}, {len(cohort.selected)} selected)"
            )

    def run(self, req: SecureRequest) -> tuple[Aggregate, Update, dict[str, float]]:
        """The four stages over ``req.chosen``; the mean delta as an ``Aggregate``, a summary
        update (Σ w, mean loss) and the round's protocol metrics."""
        transport, chosen, r = req.transport, req.chosen, req.r
        rng = np.random.default_rng(derive_seed(self.seed, "secagg", transport.node_id, r))
        cohort = self.cohort(chosen, rng)
        here = f"{transport.node_id} round {r}"
        keys = self._advertise(transport, cohort, r)
        self.fail_below("secagg_keys", cohort, list(keys), here)
        routed = self._share(transport, cohort, keys, r)
        u2 = [u for u in cohort.selected if u in routed]
        self.fail_below("secagg_share", cohort, u2, here)
        masked = self._masked(transport, cohort, req.payload, routed, u2, r, req.deadline_s)
        u3 = [u for u in u2 if u in masked]
        self.fail_below("train", cohort, u3, here)
        shares = self._unmask(transport, cohort, u2, u3, r, rng)
        vector = self._recover(cohort, keys, masked, shares, u2, u3, here)
        agg, summary = mean_update(vector, req.reference, transport.node_id, r)
        metrics = {
            "participants": float(len(u3)),
            "secagg_dropped_before_masking": float(len(u2) - len(u3)),
            "secagg_dropped_after_masking": float(len(u3) - len(shares)),
        }
        return agg, summary, metrics

    def _advertise(self, transport: Transport, cohort: Cohort, r: int) -> dict[str, bytes]:
        here = transport.node_id
        msgs = [Message(here, u, "secagg_keys", r) for u in cohort.selected]
        return {m.src: bytes(m.payload["keys"].numpy().tobytes()) for m in transport.send(msgs)}

    def _share(
        self, transport: Transport, cohort: Cohort, keys: Mapping[str, bytes], r: int
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Stage 1; the ciphertexts per recipient: {recipient: {sender: ciphertext}}."""
        alive = [u for u in cohort.selected if u in keys]
        msgs = []
        for u in alive:
            ids = cohort.holders(u, alive)
            body = {
                "ids": ids,
                "points": [cohort.points[v] for v in ids],
                "keys": as_u8([keys[v] for v in ids]),
                "t": cohort.t,
            }
            msgs.append(Message(transport.node_id, u, "secagg_share", r, body))
        replies = transport.send(msgs)
        routed: dict[str, dict[str, torch.Tensor]] = {m.src: {} for m in replies}
        for reply in replies:
            for v, blob in zip(reply.payload["to"], reply.payload["ct"], strict=True):
                if v in routed:
                    routed[v][reply.src] = blob
        return routed

    def _masked(
        self,
        transport: Transport,
        cohort: Cohort,
        payload: Mapping[str, Any],
        routed: Mapping[str, Mapping[str, torch.Tensor]],
        u2: Sequence[str],
        r: int,
        deadline_s: float | None,
    ) -> dict[str, Update]:
        msgs = []
        for u in u2:
            box = {v: blob for v, blob in routed[u].items() if v in u2}
            plan = {
                "from": list(box),
                "ct": torch.stack(list(box.values())) if box else as_u8([]),
                "peers": [v for v in cohort.holders(u, u2) if v != u],
                "bits": self.settings.bits,
                "scale_bits": self.scale_bits,
                "clip": self.settings.clip,
            }
            msgs.append(Message(transport.node_id, u, "train", r, {**payload, "secagg": plan}))
        return {m.src: m.payload["update"] for m in transport.send(msgs, deadline_s)}

    def _unmask(
        self,
        transport: Transport,
        cohort: Cohort,
        u2: Sequence[str],
        u3: Sequence[str],
        r: int,
        rng: np.random.Generator,
    ) -> dict[str, Message]:
        """Stage 3, after the simulated dropouts (a share of U3 that never answers)."""
        n_drop = math.floor(self.settings.dropout_after_masking * len(u3))
        gone = set(rng.choice(list(u3), size=n_drop, replace=False).tolist()) if n_drop else set()
        dropped = [u for u in u2 if u not in u3]
        msgs = []
        for u in u3:
            if u in gone:
                continue
            mine = set(cohort.holders(u, u2))
            body = {
                "survivors": [v for v in u3 if v in mine],
                "dropped": [v for v in dropped if v in mine],
            }
            msgs.append(Message(transport.node_id, u, "secagg_unmask", r, body))
        return {m.src: m for m in transport.send(msgs)}

    def _collect(
        self, cohort: Cohort, owner: str, kind: str, shares: Mapping[str, Message], where: str
    ) -> bytes:
        """Rebuild ``owner``'s secret ``kind`` (b or s) from the answers, or fail."""
        got: dict[int, int] = {}
        for holder, reply in shares.items():
            owners = reply.payload[f"{kind}_from"]
            if owner in owners:
                row = reply.payload[kind][owners.index(owner)]
                got[cohort.points[holder]] = sa.share_value(bytes(row.numpy().tobytes()))
        if len(got) < cohort.t:
            what = "self-mask seed" if kind == "b" else "mask key"
            raise sa.SecAggError(
                f"secure aggregation failed at {where}, stage secagg_unmask: device {owner}'s "
                f"{what} needs t={cohort.t} shares, {len(got)} of its share-holders answered "
                f"(survivors: {len(shares)} of {len(cohort.selected)} selected)"
            )
        return sa.secret_bytes(sa.shamir_reconstruct(got, cohort.t))

    def _recover(
        self,
        cohort: Cohort,
        keys: Mapping[str, bytes],
        masked: Mapping[str, Update],
        shares: Mapping[str, Message],
        u2: Sequence[str],
        u3: Sequence[str],
        where: str,
    ) -> np.ndarray:
        bits = self.settings.bits
        vectors = [sa.from_wire(masked[u].state["masked"].numpy(), bits) for u in u3]
        self_seeds = [self._collect(cohort, u, "b", shares, where) for u in u3]
        orphans = []
        for u in (v for v in u2 if v not in u3):
            s_sk = self._collect(cohort, u, "s", shares, where)
            for v in cohort.holders(u, u3):
                if v != u:
                    seed = sa.agree(s_sk, keys[v][sa.KEY_BYTES :], "mask")
                    orphans.append((v, u, seed))
        total = sa.unmask(sa.ring_sum(vectors, bits), self_seeds, orphans, bits)
        return sa.FixedPoint(bits, self.scale_bits, self.settings.clip).decode(total)


def mean_update(
    vector: np.ndarray, reference: ModelState, node: str, r: int
) -> tuple[Aggregate, Update]:
    """From the decoded sums (Σ w·Δ, Σ w, Σ w·loss): the mean delta as an ``Aggregate``
    and a summary update carrying Σ w and the weighted mean loss."""
    total_w, loss_sum = float(vector[-2]), float(vector[-1])
    mean = torch.from_numpy(vector[:-TAIL] / total_w)
    keys = float_keys(reference)
    mean_delta = unflatten(mean, reference, keys)
    for k in reference:
        if k not in keys:  # integer buffers keep the reference's value
            mean_delta[k] = reference[k].clone()
    summary = Update(
        mean_delta,
        total_w,
        kind="delta",
        metrics={"train_loss": loss_sum / total_w},
        origin=node,
        round=r,
    )
    return Aggregate(reference, mean_delta, "delta"), summary

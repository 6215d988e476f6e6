"""Homomorphic aggregation as messages (``[secure_aggregation] mode = "paillier"``).

Three exchanges per round, each of real ``Message``s (exact bytes on the simulated clock,
and over gRPC):

1. ``he_key``: the round's key holder (the first device of the cohort) sends its Paillier
   public modulus n (it makes its key pair once, with ``key_bits`` bits, and keeps it).
2. ``train``: the usual request plus n and the encoding; the device trains and its
   middleware (last on the reply, like masking) encodes the update exactly as secure
   aggregation does (delta, then 1 and the loss, clipped, times the weight, fixed point)
   and sends it packed and encrypted under n.
3. ``he_decrypt``: the server multiplies the ciphertexts (Paillier addition) and sends the
   encrypted sum to the key holder, which returns the decrypted ring sum.

Trust model: the server and the key holder do not collude; the server sees only
ciphertexts, the key holder only the sum. Devices that do not answer are simply not in the
sum (no threshold, no recovery step); a key holder that does not answer fails the round.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedge.aggregation import paillier as he
from fedge.aggregation import secagg as sa
from fedge.aggregation.pipeline import Aggregate
from fedge.algorithms.secure import as_u8, byte_rows, mean_update, update_vector
from fedge.algorithms.secure_settings import SecureAggregationSettings, SecureRequest
from fedge.core.errors import FedgeError
from fedge.core.message import Message
from fedge.core.node import NodeApp, NodeContext
from fedge.core.update import ModelState, Update
from fedge.transforms.pipeline import reference_model


def _n_bytes(n: int) -> torch.Tensor:
    return as_u8(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def _n_of(t: torch.Tensor) -> int:
    return int.from_bytes(bytes(t.numpy().tobytes()), "big")


@dataclass
class HEDevice:
    """The device side: the key holder's handlers and the encrypting middleware."""

    key_bits: int

    def key(self, message: Message, ctx: NodeContext) -> Message:
        pair = ctx.state.get("he_key")
        if pair is None or pair[0].n.bit_length() != self.key_bits:
            pair = he.keypair(self.key_bits)
            ctx.state["he_key"] = pair
        return message.reply("he_key", {"n": _n_bytes(pair[0].n)})

    def encrypt(self, request: Message, reply: Message, ctx: NodeContext) -> Message:
        """Middleware: encrypt the update of a homomorphic ``train`` reply."""
        plan = request.payload.get("he")
        if request.kind != "train" or plan is None or "update" not in reply.payload:
            return reply
        public = he.public_key(_n_of(plan["n"]))
        fp = sa.FixedPoint(int(plan["bits"]), int(plan["scale_bits"]), float(plan["clip"]))
        pack = he.Packing(fp.bits, int(plan["slot_bits"]), int(plan["slots"]))
        update: Update = reply.payload["update"]
        z, _ = fp.encode(update_vector(update, reference_model(request)), update.weight)
        width = he.ciphertext_bytes(public)
        blobs = [c.to_bytes(width, "big") for c in he.encrypt_vector(public, z, pack)]
        encrypted = Update(
            {"ciphertexts": as_u8(blobs)}, kind="delta", origin=update.origin, round=update.round
        )
        payload = {**reply.payload, "update": encrypted}
        return Message(reply.src, reply.dst, reply.kind, reply.round, payload)

    def decrypt(self, message: Message, ctx: NodeContext) -> Message:
        pair = ctx.state.get("he_key")
        if pair is None:
            raise FedgeError(f"{ctx.node_id}: asked to decrypt without a Paillier key")
        p = message.payload
        pack = he.Packing(int(p["bits"]), int(p["slot_bits"]), int(p["slots"]))
        values = [int.from_bytes(b, "big") for b in byte_rows(p["ct"])]
        z = he.decrypt_vector(pair[1], values, pack, int(p["length"]))
        return message.reply("he_sum", {"sum": torch.from_numpy(sa.to_wire(z, pack.bits))})


def install_he_device(app: NodeApp, device: HEDevice) -> None:
    app.on("he_key", device.key)
    app.on("he_decrypt", device.decrypt)


@dataclass
class HomomorphicAggregation:
    """The server side of a homomorphic round; the same ``run`` as ``SecureAggregation``."""

    settings: SecureAggregationSettings
    scale_bits: int

    @staticmethod
    def empty_metrics() -> dict[str, float]:
        return {"he_ciphertexts_per_device": 0.0}

    def run(self, req: SecureRequest) -> tuple[Aggregate, Update, dict[str, float]]:
        transport, chosen, r = req.transport, req.chosen, req.r
        here, holder = transport.node_id, chosen[0]
        keyed = transport.send([Message(here, holder, "he_key", r)])
        if not keyed:
            raise FedgeError(
                f"homomorphic aggregation at {here} round {r}: key holder {holder} did not answer"
            )
        n = _n_of(keyed[0].payload["n"])
        public = he.public_key(n)
        bits = self.settings.bits
        pack = he.packing(n.bit_length(), bits, len(chosen))
        code = {"bits": bits, "slot_bits": pack.slot_bits, "slots": pack.slots}
        plan = {
            **code,
            "n": keyed[0].payload["n"],
            "scale_bits": self.scale_bits,
            "clip": self.settings.clip,
        }
        msgs = [Message(here, u, "train", r, {**req.payload, "he": plan}) for u in chosen]
        replies = transport.send(msgs, req.deadline_s)
        if not replies:
            raise FedgeError(f"homomorphic aggregation at {here} round {r}: no device answered")
        vectors = [
            [int.from_bytes(b, "big") for b in byte_rows(m.payload["update"].state["ciphertexts"])]
            for m in replies
        ]
        total = he.add_encrypted(public, vectors)
        width = he.ciphertext_bytes(public)
        length = reference_length(req.reference)
        body = {**code, "ct": as_u8([c.to_bytes(width, "big") for c in total]), "length": length}
        summed = transport.send([Message(here, holder, "he_decrypt", r, body)])
        if not summed:
            raise FedgeError(
                f"homomorphic aggregation at {here} round {r}: key holder {holder} did not decrypt"
            )
        z = sa.from_wire(summed[0].payload["sum"].numpy(), bits)
        vector = sa.FixedPoint(bits, self.scale_bits, self.settings.clip).decode(z)
        agg, summary = mean_update(vector, req.reference, here, r)
        metrics = {
            "participants": float(len(replies)),
            "he_ciphertexts_per_device": float(len(vectors[0])),
        }
        return agg, summary, metrics


def reference_length(reference: ModelState) -> int:
    """Entries of the encoded vector: the floating entries, then 1 and the loss."""
    return sum(v.numel() for v in reference.values() if v.is_floating_point()) + 2

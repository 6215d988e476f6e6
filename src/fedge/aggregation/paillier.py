"""Additively homomorphic aggregation with Paillier encryption (``phe``), on the same
fixed-point ring vectors as secure aggregation (``fedge.aggregation.secagg``).

A device encrypts its encoded update under the key holder's public key; the aggregator
multiplies the ciphertexts modulo n² (Paillier's addition) without learning anything; the
key holder decrypts only the sum. Ring entries are **packed**: each plaintext holds
``slots`` entries of ``slot_bits = bits + ceil(log2(cohort + 1))`` bits, so a sum over the
cohort never carries from one slot into the next (the packing of BatchCrypt, Zhang et al.,
USENIX ATC 2020). The raw Paillier operations are phe's (``raw_encrypt``,
``raw_decrypt``); without gmpy2 phe computes in pure Python, which is slow by nature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedge.aggregation.secagg import Ring, ring_mask
from fedge.core.errors import FedgeError

try:
    import phe
    from phe import PaillierPrivateKey, PaillierPublicKey
except ImportError as exc:  # pragma: no cover - the extra is installed in CI
    raise FedgeError(
        "homomorphic aggregation needs the 'phe' package: pip install 'fedge[he]'"
    ) from exc


@dataclass(frozen=True)
class Packing:
    """How ring entries are packed into Paillier plaintexts."""

    bits: int
    slot_bits: int
    slots: int

    def ciphertexts(self, length: int) -> int:
        """Ciphertexts needed for ``length`` entries."""
        return math.ceil(length / self.slots)


def packing(key_bits: int, bits: int, cohort: int) -> Packing:
    """Slots of ``bits + ceil(log2(cohort + 1))`` bits in a plaintext below 2^(key_bits-1)."""
    slot_bits = bits + math.ceil(math.log2(cohort + 1))
    slots = (key_bits - 1) // slot_bits
    if slots < 1:
        raise ValueError(f"a {key_bits}-bit key cannot hold a {slot_bits}-bit slot")
    return Packing(bits, slot_bits, slots)


def keypair(key_bits: int) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    """A fresh Paillier key pair with an n of ``key_bits`` bits (phe, OS randomness)."""
    public, private = phe.generate_paillier_keypair(n_length=key_bits)
    return public, private


def ciphertext_bytes(public: PaillierPublicKey) -> int:
    """Bytes of one ciphertext on the wire (an element of Z_{n²})."""
    return math.ceil(int(public.nsquare).bit_length() / 8)


def encrypt_vector(public: PaillierPublicKey, z: Ring, pack: Packing) -> list[int]:
    """The ring vector ``z`` packed and encrypted, ``pack.slots`` entries per ciphertext."""
    values = [int(v) for v in (z & ring_mask(pack.bits))]
    out = []
    for start in range(0, len(values), pack.slots):
        plain = 0
        for j, v in enumerate(values[start : start + pack.slots]):
            plain |= v << (j * pack.slot_bits)
        out.append(int(public.raw_encrypt(plain)))
    return out


def add_encrypted(public: PaillierPublicKey, vectors: Sequence[Sequence[int]]) -> list[int]:
    """The encryption of the sum: the product of the ciphertexts modulo n², per position."""
    total = [1] * len(vectors[0])
    for vector in vectors:
        total = [a * c % public.nsquare for a, c in zip(total, vector, strict=True)]
    return total


def decrypt_vector(
    private: PaillierPrivateKey, ciphertexts: Sequence[int], pack: Packing, length: int
) -> Ring:
    """Decrypt and unpack ``length`` ring entries (each slot reduced modulo 2^bits)."""
    slot_mask = (1 << pack.slot_bits) - 1
    ring = (1 << pack.bits) - 1
    values: list[int] = []
    for c in ciphertexts:
        plain = int(private.raw_decrypt(c))
        values.extend((plain >> (j * pack.slot_bits)) & slot_mask & ring for j in range(pack.slots))
    return np.array(values[:length], dtype=np.uint64)


def to_bytes(values: Sequence[int], width: int) -> bytes:
    """Integers as fixed-width big-endian byte strings, concatenated."""
    return b"".join(v.to_bytes(width, "big") for v in values)


def from_bytes(data: bytes, width: int) -> list[int]:
    """Inverse of ``to_bytes``."""
    return [int.from_bytes(data[i : i + width], "big") for i in range(0, len(data), width)]


def public_key(n: int) -> PaillierPublicKey:
    """The public key of modulus ``n`` (what the key holder advertises)."""
    return PaillierPublicKey(n)

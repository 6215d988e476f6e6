"""The mathematics of secure aggregation (Bonawitz et al., CCS 2017; SecAgg+ of Bell et al.,
CCS 2020), free of any framework type: fixed-point encoding into the ring Z_{2^bits}, the
pseudo-random generator that expands a seed into a mask, X25519 key agreement, authenticated
encryption of the secret shares, Shamir secret sharing, masking and unmasking, and the
SecAgg+ communication graph.

The message-level protocol that uses these pieces lives in ``fedge.algorithms.secure``.

- **Ring.** Values live in Z_{2^bits} (``bits`` in 8..64), held as ``numpy.uint64`` and reduced
  with a bit mask, so additions wrap exactly. A real vector ``x`` (every entry clipped to
  ``[-clip, clip]``) of a device with weight ``w`` is encoded as ``round(w·x·2^scale_bits)``
  mod 2^bits; the sum over the cohort decodes correctly (two's complement) as long as
  ``cohort · max_weight · clip · 2^scale_bits < 2^(bits-1)`` (``capacity_ok``), so overflow is
  impossible by construction when the parameters pass that check.
- **PRG.** A 32-byte seed keys ChaCha20 (``cryptography``) with a zero nonce; its keystream,
  read as little-endian 64-bit words reduced mod 2^bits, is the mask. A power-of-two modulus
  keeps the words uniform.
- **Key agreement.** X25519 Diffie–Hellman (``cryptography``); the shared secret goes through
  HKDF-SHA256 with a purpose label, so the same pair of keys gives independent mask seeds and
  share-encryption keys.
- **Shares.** Shamir's scheme over GF(p), p = 2^256 + 297 (the smallest prime above 2^256), so
  any 32-byte secret is a field element; a share is 33 bytes. Shares travel encrypted with
  AES-GCM under the agreed key, the round and both ids as associated data.
- **Randomness.** Keys, seeds and polynomial coefficients come from the operating system's
  CSPRNG (``secrets`` / ``cryptography``), never from a seeded generator: masks differ between
  runs, but they cancel exactly, so the unmasked sum does not depend on them.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedge.core.errors import FedgeError

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError as exc:  # pragma: no cover - the extra is installed in CI
    raise FedgeError(
        "secure aggregation needs the 'cryptography' package: pip install 'fedge[secure]'"
    ) from exc

Ring = NDArray[np.uint64]

PRIME = 2**256 + 297
"""The Shamir field: the smallest prime above 2^256 (every 32-byte secret is an element)."""
SHARE_BYTES = 33
"""Bytes of one share's value (an element of GF(PRIME), big-endian)."""
KEY_BYTES = 32
"""Bytes of an X25519 public or private key, and of a seed."""
NONCE_BYTES = 12
TAG_BYTES = 16
MIN_BITS, MAX_BITS = 8, 64


class SecAggError(FedgeError):
    """A secure-aggregation step that cannot go on (too few shares, a forged share)."""


# ----------------------------------------------------------------------------- the ring


def ring_mask(bits: int) -> np.uint64:
    """``2^bits - 1`` as a uint64, to reduce modulo 2^bits."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
    return np.uint64((1 << bits) - 1)


def capacity_ok(bits: int, scale_bits: int, cohort: int, max_weight: float, clip: float) -> bool:
    """Whether a sum over ``cohort`` encoded inputs cannot overflow the signed range:
    ``cohort · max_weight · clip · 2^scale_bits < 2^(bits-1)``."""
    return cohort * max_weight * clip * 2.0**scale_bits < 2.0 ** (bits - 1)


def max_scale_bits(bits: int, cohort: int, max_weight: float, clip: float) -> int:
    """The largest ``scale_bits`` that passes ``capacity_ok`` (may be negative)."""
    s = math.floor(bits - 1 - math.log2(cohort * max_weight * clip))
    while not capacity_ok(bits, s, cohort, max_weight, clip):
        s -= 1
    return s


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point encoding of weighted real vectors into Z_{2^bits}."""

    bits: int
    scale_bits: int
    clip: float

    def encode(self, x: NDArray[np.float64], weight: float = 1.0) -> tuple[Ring, int]:
        """``round(weight · clip(x) · 2^scale_bits)`` mod 2^bits, and how many entries were
        clipped."""
        clipped = np.clip(x, -self.clip, self.clip)
        n_clipped = int(np.count_nonzero(clipped != x))
        scaled = np.rint(clipped * (weight * 2.0**self.scale_bits)).astype(np.int64)
        return scaled.view(np.uint64) & ring_mask(self.bits), n_clipped

    def decode(self, z: Ring) -> NDArray[np.float64]:
        """The signed value of ring elements (two's complement), divided by 2^scale_bits."""
        z = z & ring_mask(self.bits)
        if self.bits == 64:
            signed = z.view(np.int64)
        else:
            half = np.uint64(1 << (self.bits - 1))
            signed = z.astype(np.int64) - (z >= half).astype(np.int64) * (1 << self.bits)
        return signed.astype(np.float64) / 2.0**self.scale_bits

    def step(self) -> float:
        """The quantisation step of one encoded (weighted) entry."""
        return 2.0**-self.scale_bits


def wire_dtype(bits: int) -> type[np.signedinteger]:
    """The narrowest signed integer type that holds a ring element's bits on the wire."""
    if bits <= 16:
        return np.int16
    if bits <= 32:
        return np.int32
    return np.int64


def to_wire(z: Ring, bits: int) -> NDArray[np.signedinteger]:
    """Ring elements as the narrowest signed integers (same bits, reinterpreted)."""
    dtype = wire_dtype(bits)
    unsigned = {np.int16: np.uint16, np.int32: np.uint32, np.int64: np.uint64}[dtype]
    return (z & ring_mask(bits)).astype(unsigned).view(dtype)


def from_wire(w: NDArray[np.signedinteger], bits: int) -> Ring:
    """Inverse of ``to_wire``."""
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[w.dtype.itemsize]
    return np.ascontiguousarray(w).view(unsigned).astype(np.uint64) & ring_mask(bits)


def prg(seed: bytes, length: int, bits: int) -> Ring:
    """``length`` ring elements expanded from a 32-byte ``seed`` (ChaCha20 keystream)."""
    if len(seed) != KEY_BYTES:
        raise ValueError(f"a PRG seed has {KEY_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * length))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64) & ring_mask(bits)


# ---------------------------------------------------------------- keys and encryption


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair as raw bytes (so a node's state pickles)."""

    private: bytes
    public: bytes


def generate_keypair() -> KeyPair:
    """A fresh X25519 key pair from the operating system's CSPRNG."""
    key = X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    private = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return KeyPair(private, key.public_key().public_bytes(raw, serialization.PublicFormat.Raw))


def agree(private: bytes, peer_public: bytes, purpose: str) -> bytes:
    """A 32-byte key both ends of an X25519 pair derive alike, one per ``purpose``."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )
    hkdf = HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=f"fedge-secagg/{purpose}".encode())
    return hkdf.derive(shared)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-GCM under ``key``: nonce | ciphertext | tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, blob: bytes, associated: bytes) -> bytes:
    """Inverse of ``encrypt``; a forged or misrouted ciphertext raises ``SecAggError``."""
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated)
    except InvalidTag:
        raise SecAggError("a secret share failed authentication (forged or misrouted)") from None


def new_seed() -> bytes:
    """A fresh 32-byte seed from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


# ------------------------------------------------------------------------------ Shamir


def shamir_split(
    secret: int, holders: Sequence[int], threshold: int, prime: int = PRIME
) -> dict[int, int]:
    """Shares of ``secret`` (< prime) at the nonzero points ``holders``: any ``threshold`` of
    them determine it, fewer reveal nothing (a random polynomial of degree threshold-1)."""
    if not 0 <= secret < prime:
        raise ValueError("the secret must be an element of the field")
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold {threshold} for {len(holders)} holders")
    if len(set(holders)) != len(holders) or any(not 0 < x < prime for x in holders):
        raise ValueError("holders must be distinct nonzero field elements")
    coefficients = [secret] + [secrets.randbelow(prime) for _ in range(threshold - 1)]
    return {x: _horner(coefficients, x, prime) for x in holders}


def _horner(coefficients: Sequence[int], x: int, prime: int) -> int:
    y = 0
    for c in reversed(coefficients):
        y = (y * x + c) % prime
    return y


def shamir_reconstruct(shares: Mapping[int, int], threshold: int, prime: int = PRIME) -> int:
    """The secret from ``threshold`` shares (the first ones by point), by Lagrange
    interpolation at 0; fewer shares raise ``SecAggError``."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares cannot rebuild a secret of threshold {threshold}")
    points = sorted(shares)[:threshold]
    secret = 0
    for i in points:
        num, den = 1, 1
        for j in points:
            if j != i:
                num = num * (-j) % prime
                den = den * (i - j) % prime
        secret = (secret + shares[i] * num * pow(den, -1, prime)) % prime
    return secret


def share_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def share_value(data: bytes) -> int:
    return int.from_bytes(data, "big")


def secret_int(secret: bytes) -> int:
    return int.from_bytes(secret, "big")


def secret_bytes(value: int) -> bytes:
    """A reconstructed 32-byte secret; a value that does not fit means wrong shares."""
    if value >= 1 << (8 * KEY_BYTES):
        raise SecAggError("reconstructed secret out of range (inconsistent shares)")
    return value.to_bytes(KEY_BYTES, "big")


# ------------------------------------------------------------------- masking


def pair_sign(own: str, peer: str) -> int:
    """+1 when ``own`` adds the pair's mask, -1 when it subtracts it (ids in string order)."""
    return 1 if own < peer else -1


def apply_mask(z: Ring, seed: bytes, sign: int, bits: int) -> Ring:
    """``z + sign · PRG(seed)`` in the ring."""
    m = prg(seed, z.shape[0], bits)
    return ((z + m) if sign > 0 else (z - m)) & ring_mask(bits)


def mask_input(
    x: Ring, self_seed: bytes, pair_seeds: Mapping[str, bytes], own: str, bits: int
) -> Ring:
    """Bonawitz's double mask: ``x + PRG(b_u) + Σ_v ±PRG(s_uv)`` (sign by ``pair_sign``)."""
    y = apply_mask(x, self_seed, 1, bits)
    for peer, seed in sorted(pair_seeds.items()):
        y = apply_mask(y, seed, pair_sign(own, peer), bits)
    return y


def ring_sum(vectors: Sequence[Ring], bits: int) -> Ring:
    """The sum of ring vectors modulo 2^bits."""
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total = total + v
    return total & ring_mask(bits)


def unmask(
    total: Ring,
    self_seeds: Sequence[bytes],
    orphan_pairs: Sequence[tuple[str, str, bytes]],
    bits: int,
) -> Ring:
    """Remove the survivors' self masks and the pair masks survivors shared with dropped
    devices: ``orphan_pairs`` holds (survivor, dropped device, pair seed)."""
    z = total
    for seed in self_seeds:
        z = apply_mask(z, seed, -1, bits)
    for survivor, dropped, seed in orphan_pairs:
        z = apply_mask(z, seed, -pair_sign(survivor, dropped), bits)
    return z


# ------------------------------------------------------------------- SecAgg+ graph


def default_degree(n: int) -> int:
    """SecAgg+'s neighbour count: the even number at or above 2·log2(n), at most n-1
    (Bell et al. need k = O(log n); this constant is ours)."""
    if n <= 2:
        return max(n - 1, 0)
    k = math.ceil(2 * math.log2(n))
    k += k % 2
    return min(k, n - 1)


def harary_neighbours(
    ids: Sequence[str], degree: int, rng: np.random.Generator
) -> dict[str, set[str]]:
    """A random Harary-like graph: ids in a random cyclic order, each linked to the
    ``degree // 2`` ids on either side (``degree >= n - 1``: the complete graph)."""
    n = len(ids)
    if degree >= n - 1:
        return {u: {v for v in ids if v != u} for u in ids}
    order = [ids[i] for i in rng.permutation(n)]
    half = max(degree // 2, 1)
    out: dict[str, set[str]] = {u: set() for u in ids}
    for pos, u in enumerate(order):
        for step in range(1, half + 1):
            v = order[(pos + step) % n]
            out[u].add(v)
            out[v].add(u)
    return out

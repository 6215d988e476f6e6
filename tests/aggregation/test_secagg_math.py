"""The mathematics of secure aggregation against independent oracles: hand sums, a brute
force over a small field, scipy's chi-square test and the cryptography library itself."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from fedge.aggregation import secagg as sa


def _poly(coefficients: tuple[int, ...], x: int, p: int) -> int:
    return sum(c * x**i for i, c in enumerate(coefficients)) % p


def test_shamir_brute_force_any_t_shares_rebuild_and_t_minus_1_reveal_nothing() -> None:
    p, t, holders = 11, 3, [1, 2, 3, 4, 5]
    for coefficients in itertools.product(range(p), repeat=t):
        shares = {x: _poly(coefficients, x, p) for x in holders}
        for subset in itertools.combinations(holders, t):
            got = sa.shamir_reconstruct({x: shares[x] for x in subset}, t, prime=p)
            assert got == coefficients[0]
    # t-1 shares: every observation is equally consistent with every secret.
    for pair in itertools.combinations(holders, t - 1):
        seen: dict[tuple[int, ...], list[int]] = {}
        for coefficients in itertools.product(range(p), repeat=t):
            obs = tuple(_poly(coefficients, x, p) for x in pair)
            seen.setdefault(obs, []).append(coefficients[0])
        for secrets_ in seen.values():
            assert np.bincount(secrets_, minlength=p).tolist() == [1] * p


def test_shamir_on_the_real_field_and_too_few_shares() -> None:
    secret = sa.secret_int(sa.new_seed())
    shares = sa.shamir_split(secret, list(range(1, 8)), 5)
    for subset in itertools.combinations(shares, 5):
        assert sa.shamir_reconstruct({x: shares[x] for x in subset}, 5) == secret
    four = {x: shares[x] for x in list(shares)[:4]}
    with pytest.raises(sa.SecAggError, match="threshold 5"):
        sa.shamir_reconstruct(four, 5)
    assert sa.shamir_reconstruct(four, 4) != secret  # a wrong threshold gives garbage


def test_key_agreement_gives_both_sides_the_same_mask() -> None:
    a, b, c = sa.generate_keypair(), sa.generate_keypair(), sa.generate_keypair()
    ab = sa.agree(a.private, b.public, "mask")
    assert ab == sa.agree(b.private, a.public, "mask")
    assert ab != sa.agree(a.private, c.public, "mask")
    assert ab != sa.agree(a.private, b.public, "share")
    m1, m2 = sa.prg(ab, 1000, 32), sa.prg(sa.agree(b.private, a.public, "mask"), 1000, 32)
    assert np.array_equal(m1, m2)
    # the PRG is the ChaCha20 keystream itself (cryptography), read as little-endian words
    assert m1.max() < 2**32 and not np.array_equal(m1, sa.prg(ab, 1000, 31))


def test_share_encryption_round_trip_and_forgery() -> None:
    key = sa.agree(sa.generate_keypair().private, sa.generate_keypair().public, "share")
    blob = sa.encrypt(key, b"share", b"r1|a|b")
    assert sa.decrypt(key, blob, b"r1|a|b") == b"share"
    with pytest.raises(sa.SecAggError):
        sa.decrypt(key, blob, b"r1|a|c")  # rerouted by the server
    forged = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(sa.SecAggError):
        sa.decrypt(key, forged, b"r1|a|b")


@pytest.mark.parametrize("bits", [16, 32, 48, 64])
def test_fixed_point_sum_and_capacity_edge(bits: int) -> None:
    cohort, max_weight, clip = 10, 7.0, 2.0
    s = sa.max_scale_bits(bits, cohort, max_weight, clip)
    assert sa.capacity_ok(bits, s, cohort, max_weight, clip)
    assert not sa.capacity_ok(bits, s + 1, cohort, max_weight, clip)
    fp = sa.FixedPoint(bits, s, clip)
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-clip, clip, 50) for _ in range(cohort)]
    ws = rng.integers(1, 8, cohort).astype(float)
    total = sa.ring_sum([fp.encode(x, w)[0] for x, w in zip(xs, ws, strict=True)], bits)
    plain = sum(w * x for x, w in zip(xs, ws, strict=True))
    assert (
        np.max(np.abs(fp.decode(total) - plain)) <= cohort * fp.step() / 2 + 1e-9 * abs(plain).max()
    )
    # the extreme sum decodes exactly at the capacity; one more scale bit overflows
    extreme = np.full(3, -clip)
    worst = sa.ring_sum([fp.encode(extreme, max_weight)[0]] * cohort, bits)
    assert np.allclose(fp.decode(worst), -cohort * max_weight * clip)
    over = sa.FixedPoint(bits, s + 1, clip)
    if bits < 64:
        wrapped = sa.ring_sum([over.encode(-extreme, max_weight)[0]] * cohort, bits)
        assert np.all(over.decode(wrapped) < 0)  # overflow flips the sign


def test_fixed_point_clips_and_counts() -> None:
    fp = sa.FixedPoint(32, 8, 1.0)
    z, n = fp.encode(np.array([0.5, 3.0, -4.0]), 1.0)
    assert n == 2 and fp.decode(z).tolist() == [0.5, 1.0, -1.0]


def test_wire_round_trip() -> None:
    for bits in (12, 16, 20, 32, 40, 64):
        z = sa.prg(sa.new_seed(), 100, bits)
        w = sa.to_wire(z, bits)
        assert w.itemsize == (2 if bits <= 16 else 4 if bits <= 32 else 8)
        assert np.array_equal(sa.from_wire(w, bits), z)


def _protocol(n: int, dropped: set[int], bits: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The masking arithmetic of Bonawitz's protocol, written out by hand for n devices."""
    ids = [f"d{i}" for i in range(n)]
    keys = {u: sa.generate_keypair() for u in ids}
    self_seeds = {u: sa.new_seed() for u in ids}
    fp = sa.FixedPoint(bits, 12, 4.0)
    rng = np.random.default_rng(1)
    xs = {u: rng.uniform(-1, 1, 64) for u in ids}
    masked = {}
    for u in ids:
        pairs = {v: sa.agree(keys[u].private, keys[v].public, "mask") for v in ids if v != u}
        masked[u] = sa.mask_input(fp.encode(xs[u])[0], self_seeds[u], pairs, u, bits)
    survivors = [u for i, u in enumerate(ids) if i not in dropped]
    gone = [u for u in ids if u not in survivors]
    orphans = [
        (v, u, sa.agree(keys[u].private, keys[v].public, "mask")) for u in gone for v in survivors
    ]
    total = sa.ring_sum([masked[u] for u in survivors], bits)
    z = sa.unmask(total, [self_seeds[u] for u in survivors], orphans, bits)
    plain = sum(xs[u] for u in survivors)
    return fp.decode(z), plain


def test_masks_cancel_without_and_with_dropouts() -> None:
    for dropped in (set(), {0, 4, 7}):
        got, plain = _protocol(9, dropped)
        assert np.max(np.abs(got - plain)) <= 9 * 2.0**-13


def test_a_masked_input_looks_uniform_and_uncorrelated() -> None:
    bits, d = 32, 20000
    x = np.linspace(-1, 1, d)  # a strongly structured input
    fp = sa.FixedPoint(bits, 16, 1.0)
    keys = [sa.generate_keypair() for _ in range(3)]
    pairs = {f"p{i}": sa.agree(keys[0].private, k.public, "mask") for i, k in enumerate(keys[1:])}
    y = sa.mask_input(fp.encode(x)[0], sa.new_seed(), pairs, "d0", bits)
    buckets = (y >> np.uint64(bits - 5)).astype(np.int64)  # top 5 bits: 32 cells
    counts = np.bincount(buckets, minlength=32)
    assert stats.chisquare(counts).pvalue > 1e-4
    assert stats.kstest(y.astype(np.float64) / 2.0**bits, "uniform").pvalue > 1e-4
    assert abs(stats.pearsonr(x, y.astype(np.float64)).statistic) < 0.05
    # the oracle for the test's power: the unmasked encoding fails both tests
    plain = fp.encode(x)[0]
    assert stats.kstest(plain.astype(np.float64) / 2.0**bits, "uniform").pvalue < 1e-6


def test_harary_graph() -> None:
    ids = [f"d{i}" for i in range(20)]
    k = sa.default_degree(20)
    assert k == 10
    graph = sa.harary_neighbours(ids, k, np.random.default_rng(0))
    assert all(len(graph[u]) == k for u in ids)
    assert all(u in graph[v] for u in ids for v in graph[u])
    full = sa.harary_neighbours(ids[:5], sa.default_degree(5), np.random.default_rng(0))
    assert all(len(v) == 4 for v in full.values())

"""Homomorphic (Paillier, phe) aggregation: the decrypted sum of packed ciphertexts equals
the plain ring sum, also at the largest values a slot can hold, and a FedAvg round through
it gives the plain FedAvg model up to the fixed-point step."""

from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY
from fedge.aggregation import paillier as he
from fedge.aggregation import secagg as sa
from fedge.experiment.build import build
from fedge.experiment.config import apply_overrides, parse_config


def test_encrypted_sum_equals_the_plain_sum_with_packing() -> None:
    public, private = he.keypair(512)
    bits, cohort = 32, 5
    pack = he.packing(public.n.bit_length(), bits, cohort)
    assert pack.slot_bits == 32 + 3 and pack.slots == 511 // 35
    vectors = [sa.prg(sa.new_seed(), 40, bits) for _ in range(cohort - 1)]
    vectors.append(np.full(40, 2**bits - 1, dtype=np.uint64))  # the largest slot values
    total = he.add_encrypted(public, [he.encrypt_vector(public, v, pack) for v in vectors])
    assert len(total) == math.ceil(40 / pack.slots)
    got = he.decrypt_vector(private, total, pack, 40)
    assert np.array_equal(got, sa.ring_sum(vectors, bits))
    # the oracle: phe's own high-level API on one entry
    enc = sum((public.encrypt(int(v[0])) for v in vectors[1:]), public.encrypt(int(vectors[0][0])))
    assert private.decrypt(enc) % 2**bits == int(sa.ring_sum(vectors, bits)[0])


def tiny_linear(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """A linear model small enough for Paillier in a test (650 weights)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), n_classes))


@pytest.mark.slow
def test_a_paillier_round_equals_the_plain_round() -> None:
    raw = tomllib.loads(TINY)
    model = ['model.name="test_secagg_paillier:tiny_linear"']
    plain = build(parse_config(apply_overrides(raw, model)))
    secure = [
        "secure_aggregation.enabled=true",
        'secure_aggregation.mode="paillier"',
        "secure_aggregation.key_bits=512",
    ]
    exp = build(parse_config(apply_overrides(raw, [*model, *secure])))
    s0, m0, _ = plain.coordinator.round(plain.transport, plain.initial_state, plain.rng, 1)
    s1, m1, _ = exp.coordinator.round(exp.transport, exp.initial_state, exp.rng, 1)
    assert m1["participants"] == m0["participants"] == 4
    assert m1["he_ciphertexts_per_device"] == math.ceil((64 * 10 + 10 + 2) / (511 // 35))
    diff = max(float((s0[k].double() - s1[k].double()).abs().max()) for k in s0)
    assert diff < 1e-5
    up = exp.transport.stats()["bytes_up_device_edge"]
    assert up > 4 * m1["he_ciphertexts_per_device"] * 128  # 1024-bit ciphertexts
    assert torch.isfinite(torch.tensor(m1["train_loss"]))

"""Sparse wire form: round trip equals apply_mask, and the bytes are what a Message sends."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.core.message import Message
from fedge.core.sparse import decode_mask, decode_sparse, encode_sparse, sparse_nbytes
from fedge.learning.pruning import apply_mask, magnitude_mask


def model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(64, 20, generator=g),
        "fc1.bias": torch.randn(64, generator=g),
        "fc2.weight": torch.randn(10, 64, generator=g),
        "fc2.bias": torch.randn(10, generator=g),
        "bn.num_batches_tracked": torch.tensor(3),
    }


@settings(max_examples=25, deadline=None)
@given(sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 100))
def test_round_trip_equals_apply_mask(sparsity: float, seed: int) -> None:
    state = model_state(seed)
    mask = magnitude_mask(state, sparsity)
    expected = apply_mask(state, mask)
    decoded = decode_sparse(encode_sparse(state, mask))
    assert set(decoded) == set(expected)
    for k, v in expected.items():
        assert decoded[k].dtype == v.dtype
        assert torch.equal(decoded[k], v)


def test_round_trip_through_a_message_with_like() -> None:
    state = model_state(1)
    mask = magnitude_mask(state, 0.6)
    msg = Message("a", "b", "model", 2, {"sparse": encode_sparse(state, mask)})
    back = Message.decode(msg.encode())
    decoded = decode_sparse(back.payload["sparse"], like=state)
    for k, v in apply_mask(state, mask).items():
        assert torch.equal(decoded[k], v)


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.9])
def test_message_bytes_are_exact_and_below_dense(sparsity: float) -> None:
    state = model_state(2)
    mask = magnitude_mask(state, sparsity)
    sparse_msg = Message("a", "b", "model", 0, {"sparse": encode_sparse(state, mask)})
    dense_msg = Message("a", "b", "model", 0, {"state": state})
    wire = sparse_msg.encode()
    assert sparse_msg.nbytes() == len(wire)
    # Wire = 9-byte prefix + JSON header + exactly the payload's raw tensor bytes.
    header_len = struct.unpack_from("<4sBI", wire)[2]
    assert len(wire) == 9 + header_len + sparse_nbytes(state, mask)
    assert sparse_msg.nbytes() < dense_msg.nbytes()


def test_sparse_nbytes_formula() -> None:
    state = model_state(3)
    mask = magnitude_mask(state, 0.75)
    # float32: 4 bytes per kept value + ceil(n/8) mask bytes per masked tensor; others dense.
    expected = 0
    for k, v in state.items():
        if k in mask:
            expected += 4 * int(mask[k].sum()) + math.ceil(v.numel() / 8)
        else:
            expected += v.numel() * v.element_size()
    assert sparse_nbytes(state, mask) == expected
    assert expected == 4 * (320 + 160) + 160 + 80 + 4 * 74 + 8
    payload = encode_sparse(state, mask)
    raw = sum(t.numel() * t.element_size() for e in payload.values() for t in _tensors(e))
    assert raw == expected


def _tensors(entry: dict[str, object]) -> list[torch.Tensor]:
    return [v for v in entry.values() if isinstance(v, torch.Tensor)]


def test_the_receiver_recovers_the_sender_mask() -> None:
    state = model_state(4)
    mask = magnitude_mask(state, 0.7)
    got = decode_mask(encode_sparse(state, mask))
    assert sorted(got) == sorted(mask)
    for k, m in mask.items():
        assert torch.equal(got[k], m)
    assert decode_mask(encode_sparse(state, {})) == {}

"""The compressed codecs: exact wire round trips, exact sizes, hand-computed layouts."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.core.codec import CODECS, encoded
from fedge.core.codecs import encode_fp16, encode_qsgd, encode_sign, encode_sparse, encode_ternary
from fedge.core.message import Message, MessageError
from fedge.core.update import Encoding, Update

BN = "bn.num_batches_tracked"


def _state(specs, seed):
    """Float tensors of the given (shape, dtype, density) plus an int64 buffer."""
    rng = np.random.default_rng(seed)
    state = {}
    for i, (shape, dtype, density) in enumerate(specs):
        values = rng.standard_normal(shape) * (rng.random(shape) < density)
        state[f"t{i}"] = torch.from_numpy(np.asarray(values)).to(dtype)
    state[BN] = torch.tensor([seed % 1000, 7], dtype=torch.int64)
    return state


def _wire(update):
    msg = Message("dev", "edge", "train", 3, {"update": update})
    raw = msg.encode()
    assert msg.nbytes() == len(raw)
    return Message.decode(raw).payload["update"]


def _tree_nbytes(tree):
    """Raw tensor bytes in a wire tree (what follows the header)."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(_tree_nbytes(v) for v in tree.values())
    if isinstance(tree, list):
        return sum(_tree_nbytes(v) for v in tree)
    return 0


def _fp32(x):
    return torch.tensor(float(x), dtype=torch.float32)


def _expected(codec, x, extra):
    """What the receiver must see, computed without the codec (the oracle)."""
    if codec == "fp16":
        return x.half().to(x.dtype)
    if codec == "sparse":
        return x.float().to(x.dtype)
    if codec == "qsgd":
        scale, levels = extra
        return (_fp32(scale) * levels.float()).to(x.dtype)
    mu = _fp32(extra)
    if codec == "sign":
        return torch.where(x < 0, -mu, mu).to(x.dtype)
    if codec == "ternary":
        return torch.where(x < 0, -mu, torch.where(x > 0, mu, 0.0)).to(x.dtype)  # ternary


def _encode(codec, state, rng):
    """(wire tree, per-key oracle parameters) for ``codec``."""
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    scales = {k: float(rng.random() * 3) for k in floats}
    if codec == "fp16":
        return encode_fp16(state), {}
    if codec == "sparse":
        return encode_sparse(state), {}
    if codec == "sign":
        return encode_sign(state, scales), scales
    if codec == "ternary":
        return encode_ternary(state, scales), scales
    s = int(rng.integers(1, 40))
    levels = {k: torch.from_numpy(rng.integers(-s, s + 1, v.shape)) for k, v in floats.items()}
    extra = {k: (scales[k], levels[k]) for k in floats}
    return encode_qsgd(state, levels, scales, s), extra


CODEC_NAMES = ["fp16", "sparse", "qsgd", "ternary", "sign"]
specs = st.lists(
    st.tuples(
        st.lists(st.integers(0, 12), max_size=3),
        st.sampled_from([torch.float32, torch.float64]),
        st.sampled_from([0.0, 0.01, 0.2, 0.9, 1.0]),
    ),
    min_size=1,
    max_size=3,
)


@pytest.mark.parametrize("codec", CODEC_NAMES)
@settings(max_examples=40, deadline=None)
@given(specs=specs, seed=st.integers(0, 2**31))
def test_wire_roundtrip_is_exact_and_matches_the_oracle(codec, specs, seed):
    state = _state(specs, seed)
    data, extra = _encode(codec, state, np.random.default_rng(seed))
    update = encoded(Update(state, weight=2.0, kind="delta"), codec, data)
    back = _wire(update)
    assert back.encoding is not None and back.encoding.codec == codec
    assert back.kind == "delta" and back.weight == 2.0
    assert set(back.state) == set(state)
    for key, value in state.items():
        got = back.state[key]
        assert got.dtype == value.dtype and got.shape == value.shape
        assert torch.equal(got, update.state[key])
        want = value if key == BN else _expected(codec, value, extra.get(key))
        assert torch.equal(got, want), key


def _sparse_bytes(x):
    entry = encode_sparse({"w": x})["w"]
    return _tree_nbytes(entry), ("index" in entry, "bits" in entry)


@pytest.mark.parametrize(
    ("n", "nonzero", "nbytes", "form"),
    [
        # COO = 8 bytes per kept entry; bitmask = ceil(n/8) + 4 per kept entry
        (1000, 10, 80, (True, False)),  # COO 80 < mask 125 + 40
        (1000, 100, 525, (False, True)),  # COO 800 > mask 125 + 400
        (64, 2, 16, (False, True)),  # a tie (16 = 8 + 8) goes to the mask
        (7, 0, 0, (True, False)),  # nothing kept: an empty index
        (9, 9, 38, (False, True)),  # all kept: mask 2 + 36 < COO 72
    ],
)
def test_sparse_picks_the_smaller_of_coo_and_bitmask(n, nonzero, nbytes, form):
    x = torch.zeros(n)
    x[torch.arange(nonzero) * (n // max(nonzero, 1))] = torch.arange(1, nonzero + 1).float()
    assert _sparse_bytes(x) == (nbytes, form)
    back = _wire(encoded(Update({"w": x}), "sparse", encode_sparse({"w": x})))
    assert torch.equal(back.state["w"], x)


def test_sparse_keeps_only_nonzeros_among_given_positions():
    x = torch.zeros(40)
    x[:4] = torch.tensor([0.0, 2.0, -3.0, 4.0])
    data = encode_sparse({"w": x}, {"w": torch.tensor([39, 0, 2])})
    assert torch.equal(data["w"]["index"], torch.tensor([2], dtype=torch.int32))
    want = torch.zeros(40)
    want[2] = -3.0
    assert torch.equal(CODECS.get("sparse").decode(data)["w"], want)


# b = 1 + ceil(log2(s + 1)), by hand
BITS = {1: 2, 2: 3, 3: 3, 4: 4, 7: 4, 8: 5, 127: 8, 128: 9, 300: 10, 4095: 13, 32767: 16}


@pytest.mark.parametrize("s", sorted(BITS))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 13, 1000])
def test_qsgd_bytes_are_packed_codes_plus_one_scale(s, n):
    rng = np.random.default_rng(n + s)
    state = {"w": torch.ones(n), BN: torch.tensor(3)}
    levels = {"w": torch.from_numpy(rng.integers(-s, s + 1, n))}
    data = encode_qsgd(state, levels, {"w": 0.5}, s)
    assert _tree_nbytes(data["w"]) == math.ceil(n * BITS[s] / 8) + 4
    back = _wire(encoded(Update(state), "qsgd", data))
    assert torch.equal(back.state["w"], 0.5 * levels["w"].float())
    assert torch.equal(back.state[BN], torch.tensor(3))


def test_qsgd_bit_layout_is_sign_then_magnitude_msb_first():
    # s = 3 -> b = 3: 1 -> 001, -2 -> 110, 0 -> 000, 3 -> 011, padded: 00111000 00110000
    data = encode_qsgd({"w": torch.zeros(4)}, {"w": torch.tensor([1, -2, 0, 3])}, {"w": 1.0}, 3)
    assert data["w"]["codes"].tolist() == [0b00111000, 0b00110000]
    with pytest.raises(ValueError, match="levels"):
        encode_qsgd({"w": torch.zeros(2)}, {"w": torch.tensor([4, 0])}, {"w": 1.0}, 3)


def test_ternary_and_sign_layouts_by_hand():
    x = torch.tensor([0.0, -1.0, 2.0, 0.0, -5.0])
    ternary = encode_ternary({"w": x}, {"w": 0.5})["w"]
    assert _tree_nbytes(ternary) == 1 + 1 + 4  # mask, 3 sign bits, scale
    assert ternary["signs"].tolist() == [0b10100000]
    assert CODECS.get("ternary").decode({"w": ternary})["w"].tolist() == [0, -0.5, 0.5, 0, -0.5]
    sign = encode_sign({"w": x}, {"w": 0.25})["w"]
    assert _tree_nbytes(sign) == 1 + 4 and sign["signs"].tolist() == [0b01001000]
    # zeros travel as +
    assert CODECS.get("sign").decode({"w": sign})["w"].tolist() == [0.25, -0.25, 0.25, 0.25, -0.25]


def test_fp16_clamps_out_of_range_and_keeps_half_entries_dense():
    state = {"w": torch.tensor([1e6, -1e6, 1.0], dtype=torch.float64), "h": torch.ones(3).half()}
    data = encode_fp16(state)
    assert "dense" in data["h"] and data["w"]["half"].dtype == torch.float16
    assert CODECS.get("fp16").decode(data)["w"].tolist() == [65504.0, -65504.0, 1.0]


def _message_with(codec, data):
    return Message("a", "b", "train", 0, {"u": Update({}, encoding=Encoding(codec, data))})


def test_unknown_codec_on_the_wire_raises_message_error():
    raw = _message_with("zstd", {"w": {"dense": torch.ones(2)}}).encode()
    with pytest.raises(MessageError, match="unknown codec 'zstd'"):
        Message.decode(raw)


@pytest.mark.parametrize(
    ("codec", "field"),
    [
        ("qsgd", "scale"),
        ("qsgd", "codes"),
        ("sparse", "values"),
        ("sparse", "index"),
        ("ternary", "signs"),
        ("sign", "scale"),
        ("fp16", "half"),
        ("fp16", "dtype"),
    ],
)
def test_truncated_tree_raises_message_error(codec, field):
    x = torch.tensor([0.0] * 98 + [1.5, -2.0])
    state = {"w": x}
    data = {
        "qsgd": lambda: encode_qsgd(state, {"w": torch.ones(100, dtype=torch.int64)}, {"w": 1}, 3),
        "sparse": lambda: encode_sparse(state),
        "ternary": lambda: encode_ternary(state, {"w": 1.0}),
        "sign": lambda: encode_sign(state, {"w": 1.0}),
        "fp16": lambda: encode_fp16(state),
    }[codec]()
    assert field in data["w"]
    broken = {"w": {k: v for k, v in data["w"].items() if k != field}}
    with pytest.raises(MessageError, match=f"malformed '{codec}' update"):
        Message.decode(_message_with(codec, broken).encode())


@pytest.mark.parametrize(
    "change",
    [
        {"index": torch.tensor([98, 100], dtype=torch.int32)},  # out of range
        {"index": torch.tensor([99, 98], dtype=torch.int32)},  # not increasing
        {"values": torch.ones(3)},  # one value too many
        {"dtype": "int64"},
        {"shape": [99]},  # index 99 out of range
    ],
)
def test_inconsistent_tree_raises_message_error(change):
    data = encode_sparse({"w": torch.tensor([0.0] * 98 + [1.5, -2.0])})
    assert "index" in data["w"]
    with pytest.raises(MessageError, match="malformed 'sparse' update"):
        Message.decode(_message_with("sparse", {"w": {**data["w"], **change}}).encode())


def test_truncated_bytes_raise_message_error():
    x = torch.randn(100)
    raw = Message("a", "b", "k", 0, {"u": encoded(Update({"w": x}), "fp16", encode_fp16({"w": x}))})
    with pytest.raises(MessageError):
        Message.decode(raw.encode()[:-3])

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.core.errors import ConfigError
from fedge.core.message import Message, MessageError
from fedge.core.registry import Registry
from fedge.core.update import Update, Work, apply_delta, delta, flatten, unflatten

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.uint8,
    torch.bool,
]

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)


def _tensor(shape, dtype):
    return (torch.arange(int(np.prod(shape)) if shape else 1) % 3).reshape(shape).to(dtype)


@settings(max_examples=60, deadline=None)
@given(
    tensors=st.lists(st.tuples(shapes, st.sampled_from(DTYPES)), max_size=4),
    extra=st.dictionaries(st.text(min_size=1, max_size=5), scalars, max_size=4),
    kind=st.text(min_size=1, max_size=10),
    rnd=st.integers(0, 10**6),
)
def test_nbytes_is_exact_and_roundtrip(tensors, extra, kind, rnd):
    state = {f"t{i}": _tensor(s, d) for i, (s, d) in enumerate(tensors)}
    m = Message("dev1", "cloud", kind, rnd, {"state": state, "extra": extra, "list": [1, "a"]})
    data = m.encode()
    assert m.nbytes() == len(data)
    back = Message.decode(data)
    assert (back.src, back.dst, back.kind, back.round) == ("dev1", "cloud", kind, rnd)
    assert back.payload["extra"] == extra
    for k, v in state.items():
        assert back.payload["state"][k].dtype == v.dtype
        assert torch.equal(back.payload["state"][k], v)


def test_update_roundtrip_keeps_every_field():
    u = Update(
        {"w": torch.randn(3, 2)},
        weight=7.0,
        kind="delta",
        metrics={"loss": 0.5},
        work=Work(12, 3.5e6),
        origin="dev3",
        via="edge1",
        round=4,
    )
    back = Message.decode(Message("a", "b", "update", 4, {"update": u}).encode()).payload["update"]
    assert torch.equal(back.state["w"], u.state["w"])
    assert (back.weight, back.kind, back.work, back.origin, back.via, back.round) == (
        7.0,
        "delta",
        Work(12, 3.5e6),
        "dev3",
        "edge1",
        4,
    )
    assert dict(back.metrics) == {"loss": 0.5}


def test_nbytes_counts_the_tensors_bytes():
    small = Message("a", "b", "k", 0, {"w": torch.zeros(10)})
    big = Message("a", "b", "k", 0, {"w": torch.zeros(1010)})
    assert big.nbytes() - small.nbytes() == 1000 * 4 + (len("1010") - len("10"))


@pytest.mark.parametrize(
    "data",
    [b"", b"XXXX\x01\x00\x00\x00\x00", b"FEDG\x01\x05\x00\x00\x00{bad}"],
)
def test_malformed_messages_raise_message_error(data):
    with pytest.raises(MessageError):
        Message.decode(data)


def test_truncated_and_padded_bodies_are_rejected():
    data = Message("a", "b", "k", 0, {"w": torch.ones(4)}).encode()
    with pytest.raises(MessageError, match="shorter"):
        Message.decode(data[:-1])
    with pytest.raises(MessageError, match="trailing"):
        Message.decode(data + b"\x00")


def test_registry_miss_lists_known_names():
    reg: Registry[int] = Registry("widget")
    reg.add("b", 2)
    reg.add("a", 1)
    with pytest.raises(ConfigError, match=r"widget: got 'c'; allowed: one of a, b"):
        reg.get("c")
    with pytest.raises(ValueError):
        reg.add("a", 3)


def test_delta_and_flatten_are_inverse_and_pure():
    a = {"w": torch.randn(2, 3), "n": torch.tensor(3)}
    b = {"w": torch.randn(2, 3), "n": torch.tensor(5)}
    d = delta(b, a)
    back = apply_delta(a, d)
    assert torch.allclose(back["w"], b["w"]) and int(back["n"]) == 5
    vec = flatten(a)
    assert vec.shape == (6,)
    assert torch.allclose(unflatten(vec * 2, a)["w"], a["w"] * 2)
    assert int(a["n"]) == 3

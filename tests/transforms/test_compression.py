"""Compressors: error feedback loses no mass, top-k is exact, QSGD is unbiased, sizes shrink."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedge.transforms
from fedge.core.errors import ConfigError, FedgeError
from fedge.core.message import Message
from fedge.core.update import Update
from fedge.transforms import TRANSFORMS, make_transform
from fedge.transforms.compression import top_k

BN = "bn.num_batches_tracked"
ALL = {
    "fp16": {},
    "topk": {"ratio": 0.1},
    "randk": {"ratio": 0.1},
    "qsgd": {"levels": 5},
    "stc": {"ratio": 0.1},
    "signsgd": {},
}


def _update(seed, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    state = {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g, dtype=dtype) * scale,
        "fc.bias": torch.randn(10, generator=g, dtype=dtype) * scale,
        BN: torch.tensor(seed, dtype=torch.int64),
    }
    return Update(state, weight=3.0, kind="delta", origin="dev1")


def _wire(update):
    msg = Message("dev1", "edge1", "train", 1, {"update": update})
    raw = msg.encode()
    assert msg.nbytes() == len(raw)
    return Message.decode(raw).payload["update"], len(raw)


def _send(name, params, update, memory=None, seed=0):
    transform = make_transform(name, params, "compression[0]")
    return transform.send(update, {} if memory is None else memory, np.random.default_rng(seed))


def test_importing_fedge_transforms_registers_the_compressors():
    assert set(ALL) <= set(fedge.transforms.TRANSFORMS.names())
    docs = dict(TRANSFORMS.describe())
    assert all(len(docs[name]) > 20 for name in ALL)


@pytest.mark.parametrize("name", sorted(ALL))
def test_receiver_decodes_exactly_the_sent_state_and_inputs_are_untouched(name):
    update = _update(1)
    before = {k: v.clone() for k, v in update.state.items()}
    out = _send(name, ALL[name], update)
    assert all(torch.equal(update.state[k], before[k]) for k in before)
    assert out.kind == "delta" and out.weight == 3.0 and out.origin == "dev1"
    back, _ = _wire(out)
    for key, value in before.items():
        assert back.state[key].dtype == value.dtype and back.state[key].shape == value.shape
        assert torch.equal(back.state[key], out.state[key])
    assert torch.equal(back.state[BN], before[BN])  # integer entries travel unchanged


@pytest.mark.parametrize(
    ("name", "params"), [("topk", {"ratio": 0.05}), ("stc", {"ratio": 0.05}), ("signsgd", {})]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_error_feedback_loses_no_mass(name, params, dtype):
    transform = make_transform(name, params, "compression[0]")
    memory: dict = {}
    raw_sum = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in _update(0).state.items()}
    sent_sum = {k: torch.zeros_like(v) for k, v in raw_sum.items()}
    for rnd in range(20):
        update = _update(rnd, dtype, scale=1 + rnd % 3)
        out = transform.send(update, memory, np.random.default_rng(rnd))
        for key in raw_sum:
            raw_sum[key] += update.state[key].double()
            sent_sum[key] += out.state[key].double()
        assert not torch.equal(out.state["conv.weight"], update.state["conv.weight"])
    residual = memory["residual"]
    assert set(residual) == {"conv.weight", "fc.bias"}
    for key, residual_value in residual.items():
        total = sent_sum[key] + residual_value.double()
        error = float((total - raw_sum[key]).norm())
        assert error <= 1e-5 * float(raw_sum[key].norm()), key


def test_error_feedback_adds_the_residual_of_the_last_round():
    memory: dict = {}
    first = Update({"w": torch.tensor([3.0, 1.0, 0.0, 0.0])}, kind="delta")
    out = _send("topk", {"ratio": 0.25}, first, memory)
    assert out.state["w"].tolist() == [3.0, 0.0, 0.0, 0.0]
    assert memory["residual"]["w"].tolist() == [0.0, 1.0, 0.0, 0.0]
    second = Update({"w": torch.tensor([0.0, 0.5, 0.0, -1.2])}, kind="delta")
    assert _send("topk", {"ratio": 0.25}, second, memory).state["w"].tolist() == [0, 1.5, 0, 0]
    assert memory["residual"]["w"].tolist() == pytest.approx([0.0, 0.0, 0.0, -1.2])
    no_feedback: dict = {}
    _send("topk", {"ratio": 0.25, "error_feedback": False}, first, no_feedback)
    assert no_feedback == {}


def test_error_feedback_refuses_a_changed_model():
    memory: dict = {}
    _send("topk", {}, Update({"w": torch.ones(4)}, kind="delta"), memory)
    with pytest.raises(FedgeError, match="residual"):
        _send("topk", {}, Update({"w": torch.ones(5)}, kind="delta"), memory)
    with pytest.raises(FedgeError, match="residual"):
        _send("stc", {}, Update({"v": torch.ones(4)}, kind="delta"), memory)


@pytest.mark.parametrize("name", ["topk", "stc", "signsgd"])
def test_a_full_model_is_compressed_without_memory(name):
    """Error feedback is for deltas: a state (no reference model) keeps no residual, so a
    second, different model is not shifted by the first one's leftovers."""
    memory: dict = {}
    first = Update({"w": torch.tensor([3.0, 1.0, 0.5, -2.0])})
    second = Update({"w": torch.tensor([0.1, 0.2, 0.3, 0.4])})
    _send(name, {"ratio": 0.25} if name != "signsgd" else {}, first, memory)
    assert memory == {}
    alone = _send(name, {"ratio": 0.25} if name != "signsgd" else {}, second, {})
    after = _send(name, {"ratio": 0.25} if name != "signsgd" else {}, second, memory)
    assert torch.equal(alone.state["w"], after.state["w"])


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(-4, 4), min_size=1, max_size=300),
    ratio=st.sampled_from([0.001, 0.01, 0.1, 0.3, 0.5, 1.0]),
)
def test_topk_keeps_exactly_the_k_largest_lower_index_first(values, ratio):
    x = np.asarray(values, dtype=np.float32)
    k = math.ceil(round(ratio * len(x), 9))
    order = np.argsort(-np.abs(x), kind="stable")[:k]  # ties: lower index first
    assert sorted(top_k(torch.from_numpy(np.abs(x)), k).tolist()) == sorted(order.tolist())
    want = np.zeros_like(x)
    want[order] = x[order]
    out = _send(
        "topk", {"ratio": ratio, "error_feedback": False}, Update({"w": torch.from_numpy(x)})
    )
    assert np.array_equal(out.state["w"].numpy(), want)


def test_topk_ratio_is_what_the_user_wrote():
    # 0.07 * 100 is 7.000000000000001 in floating point; the user means 7
    out = _send("topk", {"ratio": 0.07}, Update({"w": torch.arange(1.0, 101.0)}))
    assert int((out.state["w"] != 0).sum()) == 7


def test_topk_keeps_16_bit_dtypes():
    state = {"h": torch.arange(-8.0, 8.0).half(), "b": torch.arange(16.0).bfloat16()}
    out = _send("topk", {"ratio": 0.25}, Update(state))
    assert out.state["h"].dtype == torch.float16 and out.state["b"].dtype == torch.bfloat16
    # |-8|, |-7| = |7|, then |-6| = |6|: the lower index wins the tie
    assert out.state["h"].tolist() == [-8.0, -7.0, -6.0] + [0.0] * 12 + [7.0]
    assert _wire(out)[0].state["b"].tolist() == [0.0] * 12 + [12.0, 13.0, 14.0, 15.0]


def test_topk_001_compresses_100k_entries_at_least_20x():
    update = Update({"w": torch.randn(100_000, generator=torch.Generator().manual_seed(0))})
    dense = Message("d", "e", "train", 0, {"update": update}).nbytes()
    _, sent = _wire(_send("topk", {"ratio": 0.01}, update))
    assert dense / sent >= 20


def test_randk_keeps_k_random_entries_and_scales_when_unbiased():
    x = torch.arange(1.0, 201.0)
    plain = _send("randk", {"ratio": 0.05}, Update({"w": x}), seed=1).state["w"]
    kept = plain != 0
    assert int(kept.sum()) == 10 and torch.equal(plain[kept], x[kept])
    scaled = _send("randk", {"ratio": 0.05, "unbiased": True}, Update({"w": x}), seed=1)
    assert torch.equal(scaled.state["w"] != 0, kept)  # same seed, same positions
    assert torch.allclose(scaled.state["w"][kept], x[kept] * 20)
    other = _send("randk", {"ratio": 0.05}, Update({"w": x}), seed=2).state["w"]
    assert not torch.equal(other != 0, kept)


@pytest.mark.parametrize(("name", "params"), [("randk", {"ratio": 0.1}), ("qsgd", {"levels": 3})])
def test_same_seed_same_output(name, params):
    a = _send(name, params, _update(5), seed=11)
    b = _send(name, params, _update(5), seed=11)
    c = _send(name, params, _update(5), seed=12)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert not torch.equal(a.state["conv.weight"], c.state["conv.weight"])


def test_qsgd_is_unbiased_within_its_variance_bound():
    n, s, draws = 50, 4, 4000
    v = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    update = Update({"w": v}, kind="delta")
    transform = make_transform("qsgd", {"levels": s}, "compression[0]")
    q = torch.stack(
        [transform.send(update, {}, np.random.default_rng(i)).state["w"] for i in range(draws)]
    )
    norm2 = float(v.norm()) ** 2
    bound = min(n / s**2, math.sqrt(n) / s) * norm2  # E‖Q(v) - v‖² ≤ bound (Lemma 3.1)
    # E‖mean - v‖² ≤ bound / draws; by Markov, a correct quantizer passes with p ≥ 95 %
    assert float((q.mean(0) - v).norm()) ** 2 <= 20 * bound / draws
    # exact variance by hand: Σ scale² f(1 - f), f the fractional part of |v|/scale
    scale = float(v.norm()) / s
    f = (v.abs().numpy() / scale) % 1.0
    exact = scale**2 * float(np.sum(f * (1 - f)))
    empirical = float(((q - v) ** 2).sum(1).mean())
    assert empirical <= bound
    assert abs(empirical - exact) <= 0.1 * exact
    levels = q / scale  # every value is scale · an integer level in [-s, s]
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= s + 1e-4


def test_qsgd_wire_tree_has_one_scale_and_b_bit_codes():
    out = _send("qsgd", {"levels": 127}, _update(2))
    entry = out.encoding.data["conv.weight"]
    assert entry["levels"] == 127 and entry["scale"].dtype == torch.float32
    assert entry["scale"].numel() == 1 and entry["codes"].numel() == 216  # 216 entries · 8 bits


def test_stc_sends_signs_and_one_scale_per_tensor():
    update = _update(4)
    out = _send("stc", {"ratio": 0.1}, update)
    for key in ("conv.weight", "fc.bias"):
        entry = out.encoding.data[key]
        floats = [f for f, t in entry.items() if torch.is_tensor(t) and t.is_floating_point()]
        assert (
            floats == ["scale"]
            and entry["scale"].shape == ()
            and entry["scale"].dtype == torch.float32
        )
        x = update.state[key].reshape(-1).numpy()
        k = math.ceil(0.1 * x.size)
        top = np.argsort(-np.abs(x), kind="stable")[:k]
        mu = np.float32(np.abs(x[top]).mean())
        want = np.zeros_like(x)
        want[top] = np.sign(x[top]) * mu
        sent_mu = float(entry["scale"])
        assert sent_mu == pytest.approx(float(mu), rel=1e-6)
        got = out.state[key].reshape(-1).numpy()
        assert set(np.unique(np.abs(got)).tolist()) <= {0.0, sent_mu}
        assert np.allclose(got, want, rtol=1e-6, atol=0)


def test_signsgd_sends_mean_magnitude_times_sign():
    x = torch.tensor([0.5, -2.0, 0.0, 1.5])
    out = _send("signsgd", {"error_feedback": False}, Update({"w": x}))
    assert out.state["w"].tolist() == [1.0, -1.0, 1.0, 1.0]  # mean |x| = 1; zero as +


def test_fp16_error_is_within_half_precision():
    update = _update(6, torch.float64, scale=100.0)
    out = _send("fp16", {}, update)
    for key in ("conv.weight", "fc.bias"):
        x, y = update.state[key], out.state[key]
        assert y.dtype == torch.float64
        assert torch.all((y - x).abs() <= 2**-11 * x.abs() + 2**-25)
        assert not torch.equal(x, y)


def test_a_misspelt_parameter_names_its_place():
    with pytest.raises(ConfigError, match=r"compression\[0\]\.ratoi"):
        make_transform("topk", {"ratoi": 0.1}, "compression[0]")


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("topk", {"ratio": 0}, "ratio"),
        ("topk", {"ratio": 1.5}, "ratio"),
        ("stc", {"ratio": "0.1"}, "ratio"),
        ("randk", {"ratio": True}, "ratio"),
        ("qsgd", {"levels": 0}, "levels"),
        ("qsgd", {"levels": 40_000}, "levels"),
        ("qsgd", {"levels": 2.5}, "levels"),
        ("topk", {"error_feedback": "yes"}, "error_feedback"),
        ("signsgd", {"error_feedback": 1}, "error_feedback"),
        ("randk", {"unbiased": "no"}, "unbiased"),
        ("randk", {"unbiased": True, "error_feedback": True}, "unbiased"),
    ],
)
def test_bad_values_raise_config_error(name, params, field):
    with pytest.raises(ConfigError, match=rf"compression\[1\]\.{field}"):
        make_transform(name, params, "compression[1]")


@pytest.mark.parametrize("name", sorted(ALL))
def test_empty_scalar_zero_and_16_bit_tensors_survive_two_rounds(name):
    state = {
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(-2.5),
        "zeros": torch.zeros(5),
        "h": torch.tensor([1.0, -3.0]).bfloat16(),
    }
    transform = make_transform(name, {}, "compression[0]")
    memory: dict = {}
    for rnd in range(2):
        out = transform.send(Update(state, kind="delta"), memory, np.random.default_rng(rnd))
        back, _ = _wire(out)
        for key, value in state.items():
            assert out.state[key].dtype == value.dtype and out.state[key].shape == value.shape
            assert torch.equal(back.state[key], out.state[key])
        assert out.state["zeros"].abs().sum() == 0 and out.state["scalar"] < 0

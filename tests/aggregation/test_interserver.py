"""Inter-server rules of MS-FL (SPEC §3D): WA, BA, SA, DWAA, SPAA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedge.aggregation import (
    INTERSERVER,
    AggregationError,
    Candidate,
    Evaluate,
    InterServerResult,
    Score,
    interserver,
    spaa_penalties,
    weighted_mean,
)
from fedge.core import ConfigError, ModelState
from fedge.core.update import clone_state, flatten

RULES = ["ba", "dwaa", "sa", "spaa", "wa"]
SHAPES = st.one_of(st.just(()), st.tuples(st.integers(1, 3)), st.tuples(st.just(2), st.just(2)))
VALUES = st.floats(-10, 10, allow_nan=False, width=32)
ACCURACIES = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]) | st.floats(0, 1)
LOSSES = st.sampled_from([0.1, 0.5, 2.0, math.nan, math.inf]) | st.floats(0, 5)


def assert_states_close(a: ModelState, b: ModelState) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-4)


def distance_evaluate(target: float) -> Evaluate:
    """Deterministic fake validation: accuracy falls with the distance of the flat state to t."""

    def evaluate(state: ModelState) -> Score:
        dist = float(torch.linalg.vector_norm(flatten(state) - target))
        return Score(accuracy=math.exp(-dist / 10), loss=dist)

    return evaluate


def unused(state: ModelState) -> Score:
    raise AssertionError("this rule must not evaluate anything")


def cand(
    origin: str, values: list[float], acc: float, loss: float, weight: float = 1.0
) -> Candidate:
    return Candidate({"w": torch.tensor(values)}, weight, Score(acc, loss), origin)


@st.composite
def candidate_sets(draw: st.DrawFn, max_peers: int = 4) -> tuple[Candidate, list[Candidate]]:
    """Own + 0–4 peers: two float tensors each, random data sizes and (tie-prone) scores."""
    shapes = [draw(SHAPES), draw(SHAPES)]
    n = draw(st.integers(1, max_peers + 1))
    cands = [
        Candidate(
            {
                f"p{j}": torch.from_numpy(draw(arrays(np.float32, s, elements=VALUES)).copy())
                for j, s in enumerate(shapes)
            },
            draw(st.floats(0.1, 10)),
            Score(draw(ACCURACIES), draw(LOSSES)),
            "own" if i == 0 else f"e{i}",
        )
        for i in range(n)
    ]
    return cands[0], cands[1:]


def scored(cands: list[Candidate], evaluate: Evaluate) -> list[Candidate]:
    return [Candidate(c.state, c.weight, evaluate(c.state), c.origin) for c in cands]


def run_all(own: Candidate, peers: list[Candidate]) -> dict[str, InterServerResult]:
    evaluate = distance_evaluate(0.0)
    return {name: interserver(name, own, peers, evaluate) for name in RULES}


def check_weights(
    result: InterServerResult, own: Candidate, peers: list[Candidate], sequential: bool
) -> None:
    """Weights over every origin sum to 1; accepted = contributing peers.

    SA may accept a peer whose coefficient a later γ = 1 step sets back to 0.
    """
    assert set(result.weights) == {c.origin for c in [own, *peers]}
    assert all(w >= 0 for w in result.weights.values())
    assert math.fsum(result.weights.values()) == pytest.approx(1.0)
    positive = {p.origin for p in peers if result.weights[p.origin] > 0}
    assert positive <= set(result.accepted)
    assert sequential or positive == set(result.accepted)


def mixture(result: InterServerResult, own: Candidate, peers: list[Candidate]) -> ModelState:
    """The state the reported weights describe, from the original candidates."""
    used = [c for c in [own, *peers] if result.weights[c.origin] > 0]
    return weighted_mean([c.state for c in used], [result.weights[c.origin] for c in used])


# --- properties of every rule -------------------------------------------------------------


def test_registry_holds_the_five_rules() -> None:
    assert INTERSERVER.names() == RULES


@settings(max_examples=40, deadline=None)
@given(cands=candidate_sets())
def test_weights_sum_to_one_and_describe_the_state(
    cands: tuple[Candidate, list[Candidate]],
) -> None:
    own, peers = cands
    for name, result in run_all(own, peers).items():
        check_weights(result, own, peers, sequential=name == "sa")
        assert_states_close(result.state, mixture(result, own, peers))


@settings(max_examples=30, deadline=None)
@given(cands=candidate_sets(), seed=st.integers(0, 2**32 - 1))
def test_permutation_invariance(cands: tuple[Candidate, list[Candidate]], seed: int) -> None:
    own, peers = cands
    shuffled = [peers[i] for i in np.random.default_rng(seed).permutation(len(peers))]
    for name in ["ba", "dwaa", "spaa", "wa"]:
        a = interserver(name, own, peers, unused)
        b = interserver(name, own, shuffled, unused)
        assert_states_close(a.state, b.state)
        assert a.weights == pytest.approx(b.weights)
        assert set(a.accepted) == set(b.accepted)
        assert a.score == b.score


@settings(max_examples=30, deadline=None)
@given(cands=candidate_sets())
def test_identity_when_all_candidates_are_equal(cands: tuple[Candidate, list[Candidate]]) -> None:
    own, peers = cands
    same = [Candidate(clone_state(own.state), p.weight, p.score, p.origin) for p in peers]
    for result in run_all(own, same).values():
        assert_states_close(result.state, own.state)


@settings(max_examples=20, deadline=None)
@given(cands=candidate_sets())
def test_inputs_are_not_mutated(cands: tuple[Candidate, list[Candidate]]) -> None:
    own, peers = cands
    before = [clone_state(c.state) for c in [own, *peers]]
    for result in run_all(own, peers).values():
        for k, v in result.state.items():  # results never alias an input tensor
            assert all(v.data_ptr() != c.state[k].data_ptr() for c in [own, *peers])
    for c, b in zip([own, *peers], before, strict=True):
        for k in b:
            assert torch.equal(c.state[k], b[k])


@pytest.mark.parametrize("name", RULES)
def test_no_peers_keeps_the_own_model(name: str) -> None:
    own = cand("own", [1.0, 2.0], 0.5, 1.0)
    result = interserver(name, own, [], distance_evaluate(0.0))
    assert torch.equal(result.state["w"], own.state["w"])
    assert result.weights == {"own": 1.0}
    assert result.accepted == ()


@pytest.mark.parametrize("name", ["dwaa", "spaa", "wa", "sa"])
def test_integer_buffers_take_the_max_of_the_contributors_and_dtypes_are_kept(name: str) -> None:
    def state(v: float, n: int) -> ModelState:
        return {"w": torch.full((2,), v, dtype=torch.float16), "n": torch.tensor(n)}

    own = Candidate(state(0.0, 3), 1.0, Score(0.5, 1.0), "own")
    peers = [
        Candidate(state(2.0, 7), 1.0, Score(0.5, 1.0), "a"),
        Candidate(state(math.nan, 99), 0.0, Score(0.0, math.nan), "broken"),
    ]
    result = interserver(name, own, peers, lambda s: Score(0.0 if s["n"] > 50 else 0.9, 0.1))
    assert result.weights["broken"] == 0.0
    assert int(result.state["n"]) == 7
    assert result.state["w"].dtype == torch.float16
    assert not torch.isnan(result.state["w"]).any()


# --- WA and BA -----------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(cands=candidate_sets())
def test_wa_is_the_data_weighted_mean(cands: tuple[Candidate, list[Candidate]]) -> None:
    own, peers = cands
    result = interserver("wa", own, peers, unused)
    everyone = [own, *peers]
    assert_states_close(
        result.state, weighted_mean([c.state for c in everyone], [c.weight for c in everyone])
    )
    total = sum(c.weight for c in everyone)
    assert result.weights == pytest.approx({c.origin: c.weight / total for c in everyone})


def test_ba_adopts_the_best_candidate() -> None:
    own = cand("own", [0.0], 0.6, 1.0)
    peers = [cand("a", [1.0], 0.7, 0.9), cand("b", [2.0], 0.8, 2.0), cand("c", [3.0], 0.1, 0.1)]
    result = interserver("ba", own, peers, unused)
    assert result.state["w"].tolist() == [2.0]
    assert result.weights == {"own": 0.0, "a": 0.0, "b": 1.0, "c": 0.0}
    assert result.accepted == ("b",)
    assert result.score == Score(0.8, 2.0)


def test_ba_breaks_ties_by_loss_then_own_then_origin() -> None:
    own = cand("own", [0.0], 0.8, 0.5)
    by_loss = [cand("a", [1.0], 0.8, 0.6), cand("b", [2.0], 0.8, 0.4)]
    assert interserver("ba", own, by_loss, unused).accepted == ("b",)
    tied = [cand("b", [1.0], 0.8, 0.5), cand("a", [2.0], 0.8, 0.5)]
    assert interserver("ba", own, tied, unused).accepted == ()
    worse_own = cand("own", [0.0], 0.8, math.nan)
    assert interserver("ba", worse_own, tied, unused).accepted == ("a",)


# --- SA ------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    cands=candidate_sets(),
    target=st.floats(-10, 10),
    gamma=st.floats(0.05, 1.0),
    order=st.sampled_from(["best_first", "given"]),
)
def test_sa_never_lowers_validation_accuracy(
    cands: tuple[Candidate, list[Candidate]], target: float, gamma: float, order: str
) -> None:
    evaluate = distance_evaluate(target)
    own, *peers = scored([cands[0], *cands[1]], evaluate)
    seen: list[float] = []

    def logged(state: ModelState) -> Score:
        seen.append(evaluate(state).accuracy)
        return evaluate(state)

    result = interserver("sa", own, peers, logged, gamma=gamma, order=order)
    assert len(seen) == len(peers)
    assert result.score is not None
    assert result.score.accuracy >= own.score.accuracy
    assert evaluate(result.state).accuracy == pytest.approx(result.score.accuracy)
    check_weights(result, own, peers, sequential=True)
    assert_states_close(result.state, mixture(result, own, peers))


@pytest.mark.parametrize(("order", "last"), [("given", "c"), ("best_first", "a")])
def test_sa_with_gamma_one_and_always_improving_evaluate_ends_at_the_last_peer(
    order: str, last: str
) -> None:
    calls = iter(range(1, 100))
    own = cand("own", [0.0, 0.0], 0.0, 1.0)
    peers = [cand("a", [1.0, 1.0], 0.1, 1.0), cand("b", [2.0, 2.0], 0.9, 1.0)]
    peers.append(cand("c", [3.0, 3.0], 0.5, 1.0))
    result = interserver(
        "sa", own, peers, lambda s: Score(next(calls) / 100, 0.0), gamma=1.0, order=order
    )
    expected = {p.origin: p for p in peers}[last]
    assert torch.equal(result.state["w"], expected.state["w"])
    assert result.weights == {"own": 0.0, "a": 0.0, "b": 0.0, "c": 0.0} | {last: 1.0}
    assert len(result.accepted) == 3
    assert result.accepted[-1] == last


def test_sa_mixes_with_gamma_and_skips_peers_that_lower_accuracy() -> None:
    own = cand("own", [0.0], 0.5, 1.0)
    peers = [cand("good", [4.0], 0.9, 0.1), cand("bad", [100.0], 0.8, 0.2)]

    def evaluate(state: ModelState) -> Score:
        return Score(0.7 if float(state["w"]) < 10 else 0.1, 0.0)

    result = interserver("sa", own, peers, evaluate, gamma=0.25)
    assert result.state["w"].tolist() == [1.0]
    assert result.accepted == ("good",)
    assert result.weights == {"own": 0.75, "good": 0.25, "bad": 0.0}
    assert result.score == Score(0.7, 0.0)


@settings(max_examples=30, deadline=None)
@given(cands=candidate_sets(), target=st.floats(-10, 10), seed=st.integers(0, 2**32 - 1))
def test_sa_best_first_does_not_depend_on_input_order(
    cands: tuple[Candidate, list[Candidate]], target: float, seed: int
) -> None:
    evaluate = distance_evaluate(target)
    own, *peers = scored([cands[0], *cands[1]], evaluate)
    shuffled = [peers[i] for i in np.random.default_rng(seed).permutation(len(peers))]
    a = interserver("sa", own, peers, evaluate)
    b = interserver("sa", own, shuffled, evaluate)
    assert_states_close(a.state, b.state)
    assert a.weights == b.weights
    assert a.accepted == b.accepted


# --- DWAA and SPAA -------------------------------------------------------------------------


def test_dwaa_weights_are_proportional_to_accuracy() -> None:
    own = cand("own", [0.0, 10.0], 0.2, 1.0, weight=100.0)
    peers = [cand("a", [10.0, 0.0], 0.6, 1.0), cand("b", [20.0, 20.0], 0.2, 9.0)]
    result = interserver("dwaa", own, peers, unused)
    assert result.weights == pytest.approx({"own": 0.2, "a": 0.6, "b": 0.2})
    expected = [0.2 * 0 + 0.6 * 10 + 0.2 * 20, 0.2 * 10 + 0.6 * 0 + 0.2 * 20]
    torch.testing.assert_close(result.state["w"], torch.tensor(expected))
    assert result.accepted == ("a", "b")
    assert result.score is None


def test_dwaa_with_zero_accuracies_falls_back_to_equal_weights() -> None:
    own = cand("own", [0.0], 0.0, 1.0)
    result = interserver("dwaa", own, [cand("a", [3.0], 0.0, 1.0)], unused)
    assert result.weights == {"own": 0.5, "a": 0.5}
    assert result.state["w"].tolist() == [1.5]


def test_spaa_penalties_match_the_formula() -> None:
    losses = [0.5, 0.7, 3.0, 0.6]
    z = (np.array(losses) - np.mean(losses)) / (np.std(losses) + 1e-8)
    expected = 1 / (1 + np.exp(4.0 * (z - 1.0)))
    assert spaa_penalties(losses, 4.0, 1.0, 1e-8) == pytest.approx(expected.tolist())
    assert spaa_penalties([1.0, math.nan, math.inf], 4.0, 1.0, 1e-8)[1:] == [0.0, 0.0]


def test_spaa_down_weights_an_outlier_peer() -> None:
    own = cand("own", [0.0], 0.8, 0.50)
    peers = [cand(f"e{i}", [float(i)], 0.8, 0.45 + 0.05 * i) for i in range(1, 5)]
    outlier = cand("poisoned", [1000.0], 0.8, 50.0)
    result = interserver("spaa", own, [*peers, outlier], unused)
    others = [w for o, w in result.weights.items() if o != "poisoned"]
    assert result.weights["poisoned"] < 0.01 * (sum(others) / len(others))
    assert float(result.state["w"]) < 5
    assert interserver("dwaa", own, [*peers, outlier], unused).weights["poisoned"] > 0.1


def test_spaa_ignores_a_model_with_a_non_finite_loss() -> None:
    own = cand("own", [1.0], 0.5, 0.5)
    broken = Candidate({"w": torch.tensor([math.nan])}, 1.0, Score(0.9, math.nan), "broken")
    result = interserver("spaa", own, [cand("a", [3.0], 0.5, 0.5), broken], unused)
    assert result.weights["broken"] == 0.0
    assert result.state["w"].tolist() == [2.0]
    alone = interserver("spaa", cand("own", [1.0], 0.5, math.inf), [broken], unused)
    assert alone.weights == {"own": 1.0, "broken": 0.0}


@settings(max_examples=30, deadline=None)
@given(cands=candidate_sets(), loss=st.floats(0, 10))
def test_spaa_equals_dwaa_when_all_losses_are_equal(
    cands: tuple[Candidate, list[Candidate]], loss: float
) -> None:
    own, *peers = [
        Candidate(c.state, c.weight, Score(c.score.accuracy, loss), c.origin)
        for c in [cands[0], *cands[1]]
    ]
    spaa = interserver("spaa", own, peers, unused, kappa=2.0, tau=0.5)
    dwaa = interserver("dwaa", own, peers, unused)
    assert spaa.weights == pytest.approx(dwaa.weights)
    assert_states_close(spaa.state, dwaa.state)


# --- bad input -----------------------------------------------------------------------------


def test_unknown_rule_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="ba, dwaa, sa, spaa, wa"):
        interserver("fedavg", cand("own", [0.0], 0.5, 1.0), [], unused)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("sa", {"gamma": 0.0}, "sa.gamma"),
        ("sa", {"gamma": 1.5}, "sa.gamma"),
        ("sa", {"gamma": math.nan}, "sa.gamma"),
        ("sa", {"gamma": True}, "sa.gamma"),
        ("sa", {"order": "worst_first"}, "sa.order"),
        ("spaa", {"kappa": 0.0}, "spaa.kappa"),
        ("spaa", {"eps": -1.0}, "spaa.eps"),
        ("wa", {"gamma": 0.5}, "wa parameter"),
        ("dwaa", {"kappa": 1.0}, "dwaa parameter"),
    ],
)
def test_bad_parameters_raise_config_error(
    name: str, params: dict[str, object], field: str
) -> None:
    own, peer = cand("own", [0.0], 0.5, 1.0), cand("a", [1.0], 0.5, 1.0)
    with pytest.raises(ConfigError) as info:
        interserver(name, own, [peer], distance_evaluate(0.0), **params)
    assert info.value.field.startswith(field)


def test_bad_candidates_raise_aggregation_error() -> None:
    own = cand("own", [0.0], 0.5, 1.0)
    with pytest.raises(AggregationError, match="unique"):
        interserver("wa", own, [cand("own", [1.0], 0.5, 1.0)], unused)
    with pytest.raises(AggregationError, match="shape"):
        interserver("dwaa", own, [cand("a", [1.0, 2.0], 0.5, 1.0)], unused)
    with pytest.raises(AggregationError, match="positive finite sum"):
        interserver("wa", cand("own", [0.0], 0.5, 1.0, weight=0.0), [], unused)
    with pytest.raises(AggregationError, match="accuracy"):
        Score(math.nan, 1.0)
    with pytest.raises(AggregationError, match="weight"):
        cand("a", [0.0], 0.5, 1.0, weight=-1.0)

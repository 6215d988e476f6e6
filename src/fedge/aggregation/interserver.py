"""Inter-server aggregation of multi-server FL (MS-FL): WA, BA, SA, DWAA and SPAA.

An edge mixes its own model with its neighbour edges' models. Every candidate carries its score
on the edge's own validation split; SA also calls ``evaluate`` on the models it builds. A rule
is a pure function ``(own, peers, evaluate, **params) -> InterServerResult``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedge.aggregation._params import check_params
from fedge.aggregation.mean import AggregationError, check_states, weighted_mean
from fedge.core.errors import ConfigError
from fedge.core.registry import Registry
from fedge.core.update import ModelState, clone_state


@dataclass(frozen=True)
class Score:
    """Validation accuracy (finite, >= 0) and loss (NaN/inf allowed: a broken model)."""

    accuracy: float
    loss: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.accuracy) and self.accuracy >= 0):
            raise AggregationError(f"score accuracy must be finite and >= 0, got {self.accuracy}")


@dataclass(frozen=True, eq=False)
class Candidate:
    """A model offered to the inter-server rule: its data size, validation score and origin."""

    state: ModelState
    weight: float
    score: Score
    origin: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise AggregationError(
                f"candidate {self.origin!r}: weight must be finite and >= 0, got {self.weight}"
            )


@dataclass(frozen=True, eq=False)
class InterServerResult:
    """The new edge model, origin -> mixing weight (sums to 1), its score if known, peers used."""

    state: ModelState
    weights: dict[str, float]
    score: Score | None
    accepted: tuple[str, ...]


Evaluate = Callable[[ModelState], Score]
InterServerRule = Callable[..., InterServerResult]
INTERSERVER: Registry[InterServerRule] = Registry("inter-server rule")


def _candidates(own: Candidate, peers: Sequence[Candidate]) -> list[Candidate]:
    """[own, *peers] after checking keys, shapes and that origins are unique."""
    cands = [own, *peers]
    check_states([c.state for c in cands])
    origins = [c.origin for c in cands]
    if len(set(origins)) != len(origins):
        raise AggregationError(f"candidate origins must be unique, got {origins}")
    return cands


def _loss_key(loss: float) -> float:
    return loss if math.isfinite(loss) else math.inf


def _rank(c: Candidate) -> tuple[float, float, str]:
    """Sort key, best first: higher accuracy, then lower loss (non-finite last), then origin."""
    return (-c.score.accuracy, _loss_key(c.score.loss), c.origin)


def _mix(cands: Sequence[Candidate], coeffs: Sequence[float]) -> ModelState:
    """Weighted mean of the candidates with a positive coefficient, in the own model's dtypes.

    Zero-weight candidates are left out, so their NaNs or integer buffers never leak; summing
    in origin order makes the result independent of the order of the peers.
    """
    pairs = sorted(zip(cands, coeffs, strict=True), key=lambda cw: cw[0].origin)
    used = [(c.state, w) for c, w in pairs if w > 0]
    mixed = weighted_mean([s for s, _ in used], [w for _, w in used])
    return {k: v.to(cands[0].state[k].dtype) for k, v in mixed.items()}


def _normalize(raw: Sequence[float], what: str) -> list[float]:
    total = math.fsum(raw)
    if not (math.isfinite(total) and total > 0):
        raise AggregationError(f"{what} must have a positive finite sum, got {list(raw)}")
    return [r / total for r in raw]


def _combine(cands: Sequence[Candidate], raw: Sequence[float], what: str) -> InterServerResult:
    """One weighted average; the score is known only when a single candidate has all weight."""
    coeffs = _normalize(raw, what)
    used = [c for c, w in zip(cands, coeffs, strict=True) if w > 0]
    return InterServerResult(
        state=_mix(cands, coeffs),
        weights={c.origin: w for c, w in zip(cands, coeffs, strict=True)},
        score=used[0].score if len(used) == 1 else None,
        accepted=tuple(c.origin for c in used if c is not cands[0]),
    )


def _check_number(field: str, value: float, ok: Callable[[float], bool], allowed: str) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and ok(value)):
        raise ConfigError(field, value, allowed)


@INTERSERVER.register("wa")
def weighted_average(
    own: Candidate, peers: Sequence[Candidate], evaluate: Evaluate
) -> InterServerResult:
    """WA: own and peer models averaged by data size (``weight``), i.e. ``weighted_mean``."""
    cands = _candidates(own, peers)
    return _combine(cands, [c.weight for c in cands], "wa data sizes")


@INTERSERVER.register("ba")
def best_model(own: Candidate, peers: Sequence[Candidate], evaluate: Evaluate) -> InterServerResult:
    """BA: adopt the best candidate (accuracy, then lower loss, then own, then origin name)."""
    cands = _candidates(own, peers)
    best = min(cands, key=lambda c: (*_rank(c)[:2], c is not own, c.origin))
    return InterServerResult(
        state=clone_state(best.state),
        weights={c.origin: 1.0 if c is best else 0.0 for c in cands},
        score=best.score,
        accepted=() if best is own else (best.origin,),
    )


@INTERSERVER.register("sa")
def sequential(
    own: Candidate,
    peers: Sequence[Candidate],
    evaluate: Evaluate,
    gamma: float = 0.5,
    order: str = "best_first",
) -> InterServerResult:
    """SA: w ← (1−γ)·w + γ·w_peer per peer, kept only if validation accuracy does not drop.

    "best_first" visits peers by their own score (ties: loss, then origin); "given" as passed.
    """
    _check_number("sa.gamma", gamma, lambda g: 0 < g <= 1, "a number in (0, 1]")
    if order not in ("best_first", "given"):
        raise ConfigError("sa.order", order, "one of best_first, given")
    cands = _candidates(own, peers)
    queue = sorted(peers, key=_rank) if order == "best_first" else list(peers)
    coeffs = {c.origin: 0.0 for c in cands} | {own.origin: 1.0}
    state, score, accepted = clone_state(own.state), own.score, []
    for peer in queue:
        trial = {k: (1 - gamma) * v for k, v in coeffs.items()}
        trial[peer.origin] += gamma
        trial_state = _mix(cands, [trial[c.origin] for c in cands])
        trial_score = evaluate(trial_state)
        if trial_score.accuracy >= score.accuracy:
            coeffs, state, score = trial, trial_state, trial_score
            accepted.append(peer.origin)
    return InterServerResult(state, coeffs, score, tuple(accepted))


@INTERSERVER.register("dwaa")
def accuracy_weighted(
    own: Candidate, peers: Sequence[Candidate], evaluate: Evaluate
) -> InterServerResult:
    """DWAA: one average of own and peer models weighted ∝ validation accuracy (all 0: equal)."""
    cands = _candidates(own, peers)
    raw = [c.score.accuracy for c in cands]
    if math.fsum(raw) <= 0:
        raw = [1.0] * len(cands)
    return _combine(cands, raw, "dwaa accuracies")


def _sigmoid_penalty(z: float, kappa: float, tau: float) -> float:
    """1 / (1 + exp(κ·(z − τ))) without overflow; z = +inf gives exactly 0."""
    x = kappa * (z - tau)
    if x >= 0:
        e = math.exp(-x)
        return e / (1 + e)
    return 1 / (1 + math.exp(x))


def spaa_penalties(losses: Sequence[float], kappa: float, tau: float, eps: float) -> list[float]:
    """SPAA's p_k from loss z-scores (mean, population std over the finite losses).

    A non-finite loss (NaN/inf: a broken or poisoned model) gets z = +inf, so p_k = 0.
    """
    finite = [x for x in losses if math.isfinite(x)]
    mean = math.fsum(finite) / len(finite) if finite else 0.0
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in finite) / len(finite)) if finite else 0.0
    zs = [(x - mean) / (std + eps) if math.isfinite(x) else math.inf for x in losses]
    return [_sigmoid_penalty(z, kappa, tau) for z in zs]


@INTERSERVER.register("spaa")
def performance_aware(
    own: Candidate,
    peers: Sequence[Candidate],
    evaluate: Evaluate,
    kappa: float = 4.0,
    tau: float = 1.0,
    eps: float = 1e-8,
) -> InterServerResult:
    """SPAA: DWAA with weights ∝ accuracy · p_k, p_k a sigmoid penalty on the loss z-score.

    All products 0: weights ∝ p_k; all p_k 0 (every loss non-finite): keep the own model.
    """
    _check_number("spaa.kappa", kappa, lambda k: k > 0, "a number > 0")
    _check_number("spaa.tau", tau, lambda t: True, "a finite number")
    _check_number("spaa.eps", eps, lambda e: e > 0, "a number > 0")
    cands = _candidates(own, peers)
    penalties = spaa_penalties([c.score.loss for c in cands], kappa, tau, eps)
    raw = [c.score.accuracy * p for c, p in zip(cands, penalties, strict=True)]
    if math.fsum(raw) <= 0:
        raw = penalties
    if math.fsum(raw) <= 0:
        raw = [1.0] + [0.0] * len(peers)
    return _combine(cands, raw, "spaa weights")


def interserver(
    name: str,
    own: Candidate,
    peers: Sequence[Candidate],
    evaluate: Evaluate,
    **params: object,
) -> InterServerResult:
    """Look up inter-server rule ``name`` and apply it; unknown names or parameters: ConfigError."""
    fn = INTERSERVER.get(name, field="inter-server rule")
    check_params(name, fn, params, skip=3)
    return fn(own, peers, evaluate, **params)

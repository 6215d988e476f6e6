"""Server optimizers from Reddi et al. 2021, "Adaptive Federated Optimization" (Algorithm 2).

``step(global, mean_delta)`` takes the pseudo-gradient Δ = aggregate − global (the mean
delta of the server pipeline; integer buffers carry their new value) and returns the new
global model.
As in the paper: no bias correction, second moment started at τ², one β1 for every method.
Only floating entries are stepped (in float64, cast back); integer buffers come from the
aggregate. Inputs are never mutated; the optimizer keeps its own moments.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Protocol

import torch

from fedge.aggregation._params import check_params
from fedge.aggregation.mean import AggregationError, check_states
from fedge.core.errors import ConfigError
from fedge.core.registry import Registry
from fedge.core.update import ModelState, float_keys

Moments = dict[str, torch.Tensor]


class ServerOptimizer(Protocol):
    """Turns (global model, aggregate) into the next global model; checkpointable."""

    def step(self, global_state: ModelState, mean_delta: ModelState) -> ModelState: ...

    def state_dict(self) -> dict[str, object]: ...

    def load_state_dict(self, d: Mapping[str, object]) -> None: ...


SERVER_OPTIMIZERS: Registry[Callable[..., ServerOptimizer]] = Registry("server optimizer")


def _number(owner: str, field: str, value: object, low: float, high: float, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < high:
        raise ConfigError(f"{owner}.{field}", value, allowed)


def _positive(owner: str, field: str, value: object) -> None:
    _number(owner, field, value, math.ulp(0.0), math.inf, "a finite number > 0")


def _fraction(owner: str, field: str, value: object) -> None:
    _number(owner, field, value, 0.0, 1.0, "0 <= value < 1")


def pseudo_gradient(global_state: ModelState, aggregate: ModelState) -> Moments:
    """Δ = aggregate − global for the floating entries, in float64."""
    check_states([global_state, aggregate])
    return {
        k: aggregate[k].detach().to(torch.float64) - global_state[k].detach().to(torch.float64)
        for k in float_keys(aggregate)
    }


def _grad(global_state: ModelState, mean_delta: ModelState) -> Moments:
    """The floating entries of the mean delta in float64, checked against the model."""
    check_states([global_state, mean_delta])
    return {k: mean_delta[k].detach().to(torch.float64) for k in float_keys(mean_delta)}


def _apply(global_state: ModelState, mean_delta: ModelState, step: Moments) -> ModelState:
    """global + step for stepped entries (cast to the global dtype); the rest (integer
    buffers) take the delta's new value."""
    out: ModelState = {}
    for key, agg in mean_delta.items():
        if key in step:
            base = global_state[key].detach()
            out[key] = (base.to(torch.float64) + step[key]).to(base.dtype)
        else:
            out[key] = agg.detach().clone()
    return out


def _previous(store: Moments, key: str, like: torch.Tensor, fill: float) -> torch.Tensor:
    prev = store.get(key)
    if prev is None:
        return torch.full_like(like, fill)
    if prev.shape != like.shape:
        raise AggregationError(
            f"key {key!r}: optimizer state has shape {tuple(prev.shape)}, "
            f"the model has {tuple(like.shape)}"
        )
    return prev


def _moments(d: Mapping[str, object], name: str) -> Moments:
    raw = d.get(name, {})
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise AggregationError(f"optimizer state {name!r} must map names to tensors")
    return {str(k): v.detach().to(torch.float64).clone() for k, v in raw.items()}


def _copy(moments: Moments) -> Moments:
    return {k: v.clone() for k, v in moments.items()}


class NoServerOptimizer:
    """Plain FedAvg: global + mean delta (the server pipeline skips it and keeps the
    aggregate as it was computed)."""

    def step(self, global_state: ModelState, mean_delta: ModelState) -> ModelState:
        return _apply(global_state, mean_delta, _grad(global_state, mean_delta))

    def state_dict(self) -> dict[str, object]:
        return {}

    def load_state_dict(self, d: Mapping[str, object]) -> None:
        return None


class FedAvgM:
    """Server momentum (Hsu et al. 2019): v = momentum·v + Δ; w ← w + lr·v."""

    def __init__(self, lr: float = 1.0, momentum: float = 0.9) -> None:
        _positive("fedavgm", "lr", lr)
        _fraction("fedavgm", "momentum", momentum)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self._v: Moments = {}

    def step(self, global_state: ModelState, mean_delta: ModelState) -> ModelState:
        grad = _grad(global_state, mean_delta)
        self._v = {k: self.momentum * _previous(self._v, k, d, 0.0) + d for k, d in grad.items()}
        return _apply(global_state, mean_delta, {k: self.lr * v for k, v in self._v.items()})

    def state_dict(self) -> dict[str, object]:
        return {"v": _copy(self._v)}

    def load_state_dict(self, d: Mapping[str, object]) -> None:
        self._v = _moments(d, "v")


class _Adaptive(ABC):
    """Shared FedAdam / FedYogi / FedAdagrad step: w ← w + lr·m / (√v + τ)."""

    name = "adaptive"

    def __init__(
        self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        _positive(self.name, "lr", lr)
        _fraction(self.name, "beta1", beta1)
        _fraction(self.name, "beta2", beta2)
        _positive(self.name, "tau", tau)
        self.lr, self.beta1, self.beta2, self.tau = (
            float(lr),
            float(beta1),
            float(beta2),
            float(tau),
        )
        self._m: Moments = {}
        self._v: Moments = {}

    @abstractmethod
    def _second(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The second-moment update that tells the adaptive methods apart."""

    def step(self, global_state: ModelState, mean_delta: ModelState) -> ModelState:
        grad = _grad(global_state, mean_delta)
        m = {
            k: self.beta1 * _previous(self._m, k, d, 0.0) + (1 - self.beta1) * d
            for k, d in grad.items()
        }
        v = {k: self._second(_previous(self._v, k, d, self.tau**2), d) for k, d in grad.items()}
        self._m, self._v = m, v
        steps = {k: self.lr * m[k] / (v[k].sqrt() + self.tau) for k in grad}
        return _apply(global_state, mean_delta, steps)

    def state_dict(self) -> dict[str, object]:
        return {"m": _copy(self._m), "v": _copy(self._v)}

    def load_state_dict(self, d: Mapping[str, object]) -> None:
        self._m, self._v = _moments(d, "m"), _moments(d, "v")


class FedAdam(_Adaptive):
    """FedAdam: v = β2·v + (1 − β2)·Δ²."""

    name = "fedadam"

    def _second(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1 - self.beta2) * d**2


class FedYogi(_Adaptive):
    """FedYogi: v = v − (1 − β2)·Δ²·sign(v − Δ²)."""

    name = "fedyogi"

    def _second(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        sq = d**2
        return v - (1 - self.beta2) * sq * torch.sign(v - sq)


class FedAdagrad(_Adaptive):
    """FedAdagrad: v = v + Δ² (no β2)."""

    name = "fedadagrad"

    def __init__(self, lr: float = 0.01, beta1: float = 0.9, tau: float = 1e-3) -> None:
        super().__init__(lr, beta1, 0.0, tau)

    def _second(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return v + d**2


SERVER_OPTIMIZERS.add("none", NoServerOptimizer)
SERVER_OPTIMIZERS.add("fedavgm", FedAvgM)
SERVER_OPTIMIZERS.add("fedadam", FedAdam)
SERVER_OPTIMIZERS.add("fedyogi", FedYogi)
SERVER_OPTIMIZERS.add("fedadagrad", FedAdagrad)


def make_server_optimizer(name: str, **params: object) -> ServerOptimizer:
    """Build server optimizer ``name``; unknown names or parameters raise ConfigError."""
    factory = SERVER_OPTIMIZERS.get(name, field="server_optimizer")
    check_params(name, factory, params, skip=0)
    return factory(**params)

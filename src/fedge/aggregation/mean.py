"""Weighted averaging of model states (FedAvg) and the aggregator registry.

An aggregator is a pure function ``(updates, rng, **params) -> ModelState``: no I/O, no
clock, no global random state. Updates of kind "state" give a state, of kind "delta" a delta.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from fedge.aggregation._params import check_params
from fedge.core.errors import FedgeError
from fedge.core.registry import Registry
from fedge.core.update import ModelState, Update

Aggregator = Callable[..., ModelState]
AGGREGATORS: Registry[Aggregator] = Registry("aggregator")


class AggregationError(FedgeError, ValueError):
    """Inputs that cannot be aggregated together (no updates, mismatched keys or shapes)."""


def check_states(states: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """Require a non-empty list of states with the same keys and shapes; errors name the key."""
    if not states:
        raise AggregationError("nothing to aggregate: got no states")
    first = states[0]
    for i, state in enumerate(states[1:], start=1):
        if state.keys() != first.keys():
            diff = sorted(set(state.keys()) ^ set(first.keys()))
            raise AggregationError(f"state {i} has different keys from state 0: {diff}")
        for key, tensor in first.items():
            if state[key].shape != tensor.shape:
                raise AggregationError(
                    f"key {key!r}: state {i} has shape {tuple(state[key].shape)}, "
                    f"state 0 has {tuple(tensor.shape)}"
                )


def check_updates(updates: Sequence[Update]) -> None:
    """Require compatible states and a single kind ("state" or "delta") across updates."""
    check_states([u.state for u in updates])
    kinds = sorted({u.kind for u in updates})
    if len(kinds) > 1:
        raise AggregationError(f"cannot aggregate updates of mixed kinds {kinds}")


def _check_weights(weights: Sequence[float], n: int) -> list[float]:
    ws = [float(w) for w in weights]
    if len(ws) != n:
        raise AggregationError(f"got {len(ws)} weights for {n} states")
    if any(not math.isfinite(w) or w < 0 for w in ws):
        raise AggregationError(f"weights must be finite and >= 0, got {ws}")
    if sum(ws) <= 0:
        raise AggregationError(f"weights must have a positive sum, got {ws}")
    return ws


def max_buffer(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Element-wise max of non-floating buffers (e.g. BatchNorm's num_batches_tracked)."""
    return torch.stack([t.detach() for t in tensors]).amax(dim=0)


BLOCK = 1 << 17
"""Elements of an entry summed at a time by ``weighted_mean`` (1 MiB of float64: the block's
sum and one term stay in the CPU cache while every state is added to them)."""


def _weighted_sum(column: Sequence[torch.Tensor], ws: Sequence[float]) -> torch.Tensor:
    """Σ w_i t_i of one entry in float64: 0 + w_1 t_1 + w_2 t_2 + ... in the order given,
    each product rounded to float64 before it is added: the operations, and so the bits, of
    ``acc += w * t.to(torch.float64)`` per state.

    It runs block by block over the elements, each block's running sum and current term
    staying in cache while every state is added to it, with one preallocated term buffer:
    no temporary the size of the entry is allocated per state, and each state is read once.
    The term is convert, multiply, add as three operations (``add_(t, alpha=w)`` may fuse
    the multiply and the add into one rounding).
    """
    ref = column[0]
    acc = torch.zeros(ref.numel(), dtype=torch.float64, device=ref.device)
    term = torch.empty(min(BLOCK, ref.numel()), dtype=torch.float64, device=ref.device)
    flats = [t.reshape(-1) for t in column]
    for start in range(0, ref.numel(), BLOCK):
        block = acc[start : start + BLOCK]
        part = term[: block.numel()]
        for w, flat in zip(ws, flats, strict=True):
            part.copy_(flat[start : start + BLOCK])
            part.mul_(w)
            block.add_(part)
    return acc.view(ref.shape)


def weighted_mean(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> ModelState:
    """Σ w_i s_i / Σ w_i per floating entry, in float64, cast back to the first state's dtype.

    The sum runs over the states in the order given, each product rounded to float64 before
    it is added (see ``_weighted_sum``). Integer (and bool) buffers cannot be averaged: they
    take the element-wise max.
    """
    check_states(states)
    ws = _check_weights(weights, len(states))
    total = sum(ws)
    out: ModelState = {}
    for key, ref in states[0].items():
        column = [s[key].detach() for s in states]
        if not ref.is_floating_point():
            out[key] = max_buffer(column)
            continue
        out[key] = _weighted_sum(column, ws).div_(total).to(ref.dtype)
    return out


@AGGREGATORS.register("mean")
def mean(updates: Sequence[Update], rng: np.random.Generator) -> ModelState:
    """FedAvg: mean of the updates weighted by ``update.weight`` (states or deltas alike)."""
    check_updates(updates)
    return weighted_mean([u.state for u in updates], [u.weight for u in updates])


INPUTS = ("reference",)
"""Keyword inputs an aggregator may declare and the server pipeline fills in."""


def check_aggregator(name: str, params: Mapping[str, object]) -> Aggregator:
    """The aggregator ``name`` after checking ``params`` against it (ConfigError otherwise)."""
    fn = AGGREGATORS.get(name, field="federation.aggregator")
    check_params(f"federation.aggregator_params ({name})", fn, params, skip=2, inputs=INPUTS)
    return fn


def aggregate(
    name: str,
    updates: Sequence[Update],
    rng: np.random.Generator,
    reference: Mapping[str, torch.Tensor] | None = None,
    **params: object,
) -> ModelState:
    """Look up aggregator ``name`` and apply it; unknown names or parameters raise ConfigError.

    ``reference`` (the model the aggregating node sent out) reaches aggregators that take it.
    Updates are combined in a canonical order (by origin, then the node that received them,
    then round), so the result does not depend on the order in which replies arrived: the
    engines deliver the same updates in different orders, and float sums are not associative.
    """
    fn = check_aggregator(name, params)
    ordered = sorted(updates, key=lambda u: (u.origin, u.via, u.round))
    if reference is not None and "reference" in inspect.signature(fn).parameters:
        return fn(ordered, rng, reference=reference, **params)
    return fn(ordered, rng, **params)

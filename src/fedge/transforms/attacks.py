"""Attacks used to evaluate defences: model poisoning on the uplink, data poisoning of samples.

An attack is one object with two seats, each a no-op unless the kind uses it:

- ``send(update, memory, rng)``: the client-side transform seat (``fedge.transforms.pipeline``)
  on the attacker's uplink, before compression. It sees the delta from the model the request
  carried; without a reference (an MS-FL edge publishing its model to a neighbour) it sees the
  full state and acts on that (``scaled`` with a negative scale flips the model itself).
- ``poison(x, y, n_classes, rng)``: the attacker's training samples, replaced once when the
  experiment is built (``fedge.experiment.attack``); training uses them from ``start_round``.

Kinds: ``sign_flip``, ``scaled`` (model replacement), ``gaussian``, ``free_rider`` (model
poisoning) and ``label_flip``, ``backdoor`` (data poisoning; a backdoor may also boost its
delta). Every kind's constructor keywords are its parameters, checked like a compressor's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from fedge.core.errors import ConfigError
from fedge.core.registry import Registry
from fedge.core.update import ModelState, Update

ATTACK_TIERS = ("device", "edge")


class AttackConfig(BaseModel):
    """One ``[[attack]]`` table: which nodes attack, from when, and how; its other keys are
    the kind's own parameters (checked against the kind before any work)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str
    share: float | None = None
    """Share of the tier's nodes that attack, drawn with the run's seed (``nodes`` instead)."""
    nodes: list[str] | None = None
    """Explicit attacker ids (``share`` instead)."""
    tier: str = "device"
    start_round: int = 1

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Attack:
    """Base of the attack kinds: both seats pass their input through unchanged."""

    poisons_data: ClassVar[bool] = False
    """True for kinds that change the attacker's training samples (device tier only)."""
    needs_reference: ClassVar[bool] = False
    """True for kinds that only make sense on a delta (a device's uplink)."""

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        return update

    def alters_updates(self) -> bool:
        """Whether ``send`` changes anything (else the attacker's uplink is left as it is)."""
        return True

    def prepare(self, x: torch.Tensor) -> None:
        """Fit what the attack derives from the whole training set (before any poisoning)."""

    def poison(
        self, x: torch.Tensor, y: torch.Tensor, n_classes: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y


ATTACKS: Registry[Callable[..., Attack]] = Registry("attack")
"""Attack kinds by name; a kind's constructor keywords are its parameters."""


def _number(where: str, value: object, low: float | None = None, strict: bool = False) -> float:
    """``value`` as a float when it is a finite number (above ``low``), else ConfigError."""
    bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(where, value, f"a finite number{bound}")
    number = float(value)
    if low is not None and (number <= low if strict else number < low):
        raise ConfigError(where, value, f"a finite number{bound}")
    return number


def _map_floats(state: ModelState, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> ModelState:
    """``fn`` on every floating entry; integer buffers are copied."""
    return {k: fn(k, v) if v.is_floating_point() else v.clone() for k, v in state.items()}


def _torch_gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


@ATTACKS.register("sign_flip")
class SignFlip(Attack):
    """Sign flipping: sends the negated delta, times ``scale``."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = _number("scale", scale, 0.0, strict=True)

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        return update.with_state(_map_floats(update.state, lambda _, v: v * -self.scale))


@ATTACKS.register("scaled")
class Scaled(Attack):
    """Model replacement (Bagdasaryan et al. 2020): the delta multiplied by ``scale``."""

    def __init__(self, scale: float = 10.0) -> None:
        self.scale = _number("scale", scale)

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        return update.with_state(_map_floats(update.state, lambda _, v: v * self.scale))


@ATTACKS.register("gaussian")
class Gaussian(Attack):
    """Gaussian noise of scale ``std`` added to (or, ``replace``, instead of) the delta.

    ``relative``: the std is ``std`` times each tensor's own standard deviation."""

    def __init__(self, std: float = 1.0, relative: bool = False, replace: bool = False) -> None:
        self.std = _number("std", std, 0.0)
        for name, flag in (("relative", relative), ("replace", replace)):
            if not isinstance(flag, bool):
                raise ConfigError(name, flag, "true or false")
        self.relative, self.replace = relative, replace

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        gen = _torch_gen(rng)

        def noisy(_: str, v: torch.Tensor) -> torch.Tensor:
            std = self.std
            if self.relative:
                spread = float(v.float().std()) if v.numel() > 1 else 1.0
                std *= spread or 1.0
            noise = torch.randn(v.shape, generator=gen, dtype=torch.float32).to(v.dtype) * std
            return noise if self.replace else v + noise

        return update.with_state(_map_floats(update.state, noisy))


@ATTACKS.register("free_rider")
class FreeRider(Attack):
    """Free rider: sends the received model back (± small noise) and claims a sample count.

    The delta is zero plus N(0, noise_std²); the weight is ``claimed_samples`` (default: its
    own count). Its device still trains and is charged for it; only what it sends is the
    free rider's."""

    needs_reference = True

    def __init__(self, noise_std: float = 0.0, claimed_samples: int | None = None) -> None:
        self.noise_std = _number("noise_std", noise_std, 0.0)
        if claimed_samples is not None and (
            isinstance(claimed_samples, bool)
            or not isinstance(claimed_samples, int)
            or claimed_samples < 1
        ):
            raise ConfigError("claimed_samples", claimed_samples, "an integer >= 1")
        self.claimed_samples = claimed_samples

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        gen = _torch_gen(rng)

        def still(_: str, v: torch.Tensor) -> torch.Tensor:
            noise = torch.randn(v.shape, generator=gen, dtype=torch.float32).to(v.dtype)
            return noise * self.noise_std

        out = update.with_state(_map_floats(update.state, still))
        if self.claimed_samples is None:
            return out
        return Update(
            out.state,
            float(self.claimed_samples),
            out.kind,
            out.metrics,
            out.work,
            out.origin,
            out.via,
            out.round,
        )


@ATTACKS.register("label_flip")
class LabelFlip(Attack):
    """Label flipping: trains on relabelled samples (Tolpegin et al. 2020).

    Class ``source`` becomes ``target``, or, without them, every label y becomes C − 1 − y."""

    poisons_data = True

    def alters_updates(self) -> bool:
        return False

    def __init__(self, source: int | None = None, target: int | None = None) -> None:
        if (source is None) != (target is None):
            raise ConfigError("source", source, "both source and target, or neither")
        for name, value in (("source", source), ("target", target)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(name, value, "a class index (integer >= 0)")
            if value is not None and value < 0:
                raise ConfigError(name, value, "a class index (integer >= 0)")
        self.source, self.target = source, target

    def poison(
        self, x: torch.Tensor, y: torch.Tensor, n_classes: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.source is None or self.target is None:
            return x, (n_classes - 1) - y
        for name, value in (("source", self.source), ("target", self.target)):
            if value >= n_classes:
                raise ConfigError(name, value, f"a class index below {n_classes}")
        return x, torch.where(y == self.source, torch.full_like(y, self.target), y)


@ATTACKS.register("backdoor")
class Backdoor(Attack):
    """Backdoor: a pixel trigger on a share of the samples, relabelled to a target class.

    The trigger is a ``size``×``size`` square of the training data's maximum value in the
    bottom-right corner (the last size² features of flat data), stamped on ``fraction`` of
    the attacker's samples, relabelled ``target``; ``boost`` > 1 also scales its delta
    (model replacement, Bagdasaryan et al. 2020)."""

    poisons_data = True

    def __init__(
        self, target: int = 0, fraction: float = 0.5, size: int = 3, boost: float = 1.0
    ) -> None:
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ConfigError("target", target, "a class index (integer >= 0)")
        fraction = _number("fraction", fraction, 0.0, strict=True)
        if fraction > 1:
            raise ConfigError("fraction", fraction, "a share in (0, 1]")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError("size", size, "an integer >= 1")
        self.target, self.fraction, self.size = target, fraction, size
        self.boost = _number("boost", boost)
        self.value: float | None = None
        """The trigger's pixel value: the training set's maximum (``prepare``)."""

    def prepare(self, x: torch.Tensor) -> None:
        self.value = float(x.max()) if len(x) else 1.0

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the trigger on every sample (a copy)."""
        out = x.clone()
        value = float(x.max()) if self.value is None else self.value
        k = self.size
        if out.ndim >= 4:
            out[..., -k:, -k:] = value
        else:
            out.reshape(out.shape[0], -1)[:, -k * k :] = value
        return out

    def poison(
        self, x: torch.Tensor, y: torch.Tensor, n_classes: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.target >= n_classes:
            raise ConfigError("target", self.target, f"a class index below {n_classes}")
        n = len(y)
        chosen = np.sort(rng.permutation(n)[: math.ceil(self.fraction * n - 1e-9)])
        idx = torch.as_tensor(chosen, dtype=torch.int64)
        x, y = x.clone(), y.clone()
        x[idx] = self.stamp(x[idx])
        y[idx] = self.target
        return x, y

    def alters_updates(self) -> bool:
        return self.boost != 1.0

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        if self.boost == 1.0:
            return update
        return update.with_state(_map_floats(update.state, lambda _, v: v * self.boost))


class Scheduled:
    """An attack's uplink seat from ``start_round`` on (by the round its update belongs to);
    earlier updates pass unchanged."""

    def __init__(self, attack: Attack, start_round: int) -> None:
        self.attack, self.start_round = attack, start_round

    def send(self, update: Update, memory: dict[str, Any], rng: np.random.Generator) -> Update:
        if update.round < self.start_round:
            return update
        return self.attack.send(update, memory, rng)


__all__ = ["ATTACKS", "ATTACK_TIERS", "Attack", "AttackConfig", "Backdoor", "Scheduled"]

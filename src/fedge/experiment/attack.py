"""``[[attack]]``: who attacks (drawn with the run's seed), checked against the algorithm, and
installed on the attackers' node apps at build time.

Model poisoning is a client-side transform put first on the attacker's uplinks (before any
compression); data poisoning replaces the training samples of the attacker's ``LocalTrainer``
with poisoned copies that it trains on from ``start_round``. Nothing in an algorithm knows an
attack: an algorithm only learns the attackers' ids (``BuildContext.attackers``) so that its
reports can leave a malicious server out of the honest servers' accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from fedge.algorithms import AlgorithmSpec, LocalTrainer
from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.core.node import NodeApp, NodeContext, derive_seed
from fedge.core.update import ModelState
from fedge.learning import ArrayDataset
from fedge.system.model import SystemModel
from fedge.transforms import Transform, make_transform
from fedge.transforms.attacks import (
    ATTACK_TIERS,
    ATTACKS,
    Attack,
    AttackConfig,
    Backdoor,
    Scheduled,
)

SHARE_EPS = 1e-9
"""Absorbs float products such as 0.3 · 10 = 3.0000000000000004 before rounding down."""


@dataclass(frozen=True)
class PlannedAttack:
    """One ``[[attack]]`` entry as built: its attack object and the nodes that run it."""

    index: int
    config: AttackConfig
    attack: Attack
    nodes: tuple[str, ...]

    def report(self) -> dict[str, Any]:
        c = self.config
        return {
            "kind": c.kind,
            "tier": c.tier,
            "start_round": c.start_round,
            "nodes": list(self.nodes),
            **c.params(),
        }


def _links_from(tier: str, spec: AlgorithmSpec) -> list[str]:
    return [link for link in spec.links if link.startswith(f"{tier}-")]


def _check_entry(where: str, entry: AttackConfig, spec: AlgorithmSpec, attack: Attack) -> None:
    if entry.tier not in ATTACK_TIERS:
        raise ConfigError(f"{where}.tier", entry.tier, "one of " + ", ".join(ATTACK_TIERS))
    if not _links_from(entry.tier, spec):
        tiers = [t for t in ATTACK_TIERS if _links_from(t, spec)]
        allowed = f"a tier whose models {spec.name!r} sends: " + (", ".join(tiers) or "none")
        raise ConfigError(f"{where}.tier", entry.tier, allowed)
    if entry.tier != "device" and (attack.poisons_data or attack.needs_reference):
        raise ConfigError(f"{where}.tier", entry.tier, f"'device' for kind {entry.kind!r}")
    if isinstance(entry.start_round, bool) or entry.start_round < 1:
        raise ConfigError(f"{where}.start_round", entry.start_round, "an integer >= 1")
    if (entry.share is None) == (entry.nodes is None):
        raise ConfigError(where, entry.share, "exactly one of share or nodes")
    if entry.share is not None and not 0 <= entry.share < 1:
        raise ConfigError(f"{where}.share", entry.share, "a share in [0, 1)")


def check_attacks(cfg: Any, spec: AlgorithmSpec) -> list[tuple[AttackConfig, Attack]]:
    """Every ``[[attack]]`` entry built and checked against the algorithm (no data needed)."""
    out = []
    for i, entry in enumerate(cfg.attack):
        where = f"attack[{i}]"
        attack: Any = make_transform(entry.kind, entry.params(), where, ATTACKS, "kind")  # type: ignore[arg-type]
        _check_entry(where, entry, spec, attack)
        out.append((entry, attack))
    return out


def choose_attackers(
    checked: Sequence[tuple[AttackConfig, Attack]], system: SystemModel, seed: int
) -> list[PlannedAttack]:
    """The attackers of each entry: its ``nodes``, or ⌊share · n⌋ of the tier's nodes drawn
    uniformly with a generator derived from the run's seed and the entry's index."""
    plans = []
    for i, (entry, attack) in enumerate(checked):
        ids = system.ids(entry.tier)
        if entry.nodes is not None:
            unknown = [n for n in entry.nodes if n not in ids]
            if unknown:
                raise ConfigError(
                    f"attack[{i}].nodes", unknown, f"{entry.tier} ids among " + ", ".join(ids)
                )
            chosen = [n for n in ids if n in entry.nodes]
        else:
            k = math.floor(float(entry.share or 0.0) * len(ids) + SHARE_EPS)
            rng = np.random.default_rng(derive_seed(seed, "attack", i))
            picked = set(rng.choice(len(ids), size=k, replace=False).tolist())
            chosen = [n for j, n in enumerate(ids) if j in picked]
        plans.append(PlannedAttack(i, entry, attack, tuple(chosen)))
    return plans


def attackers(plans: Sequence[PlannedAttack]) -> frozenset[str]:
    return frozenset(n for p in plans for n in p.nodes)


def attack_links(
    plans: Sequence[PlannedAttack], spec: AlgorithmSpec, links: Mapping[str, list[Transform]]
) -> dict[str, dict[str, list[Transform]]]:
    """Per attacker, its links' transforms: its attacks (in entry order) before ``links``."""
    out: dict[str, dict[str, list[Transform]]] = {}
    for plan in plans:
        if not plan.attack.alters_updates():
            continue
        stage = Scheduled(plan.attack, plan.config.start_round)
        for node in plan.nodes:
            own = out.setdefault(node, {k: [] for k in links})
            for link in _links_from(plan.config.tier, spec):
                own.setdefault(link, []).append(stage)
    for own in out.values():
        for link, transforms in links.items():
            own[link] = [*own.get(link, []), *transforms]
    return out


@dataclass
class FromRound:
    """A device's ``train`` handler: honest before ``start_round``, poisoned from it on."""

    honest: LocalTrainer
    poisoned: LocalTrainer
    start_round: int

    def train(self, message: Message, ctx: NodeContext) -> Message:
        trainer = self.poisoned if message.round >= self.start_round else self.honest
        return trainer.train(message, ctx)


def poison_data(
    plans: Sequence[PlannedAttack], apps: Mapping[str, NodeApp], train: ArrayDataset, seed: int
) -> None:
    """Give each data-poisoning attacker a trainer on its poisoned samples (in place); a
    device runs one data-poisoning attack at most."""
    poisoned_by: dict[str, int] = {}
    for plan in plans:
        if not plan.attack.poisons_data:
            continue
        where = f"attack[{plan.index}]"
        plan.attack.prepare(train.x)
        for node in plan.nodes:
            if node in poisoned_by:
                allowed = f"one data-poisoning attack per device ({node} is in attack"
                raise ConfigError(f"{where}.nodes", node, f"{allowed}[{poisoned_by[node]}])")
            poisoned_by[node] = plan.index
            trainer = getattr(apps[node].handlers.get("train"), "__self__", None)
            if not isinstance(trainer, LocalTrainer):
                allowed = "a model-poisoning kind (these devices do not train a LocalTrainer)"
                raise ConfigError(f"{where}.kind", plan.config.kind, allowed)
            data = trainer.data
            rng = np.random.default_rng(derive_seed(seed, "attack", plan.index, node))
            x, y = plan.attack.poison(data.x, data.y, data.n_classes, rng)
            own = ArrayDataset(x, y, data.n_classes, data.name, data.class_names)
            poisoned = replace(trainer, data=own)
            apps[node].handlers["train"] = FromRound(
                trainer, poisoned, plan.config.start_round
            ).train


Accuracy = Callable[[ModelState, ArrayDataset], float]
"""A model's accuracy on a dataset."""


def backdoor_probe(
    plans: Sequence[PlannedAttack], test: ArrayDataset, accuracy: Accuracy
) -> Callable[[ModelState], dict[str, float]] | None:
    """``attack_success_rate`` of the first backdoor: the share of test samples of other
    classes than its target, stamped with its trigger, that the model classifies as the
    target (their accuracy once relabelled ``target``); None without a backdoor attack."""
    for plan in plans:
        attack = plan.attack
        if not isinstance(attack, Backdoor):
            continue
        keep = torch.nonzero(test.y != attack.target).flatten()
        target = torch.full((len(keep),), attack.target, dtype=torch.int64)
        triggered = replace(test, x=attack.stamp(test.x[keep]), y=target)
        return BackdoorProbe(triggered, accuracy)
    return None


@dataclass
class BackdoorProbe:
    """The backdoor's success rate of a global model (see ``backdoor_probe``)."""

    triggered: ArrayDataset
    accuracy: Accuracy

    def __call__(self, state: ModelState) -> dict[str, float]:
        return {"attack_success_rate": self.accuracy(state, self.triggered)}


__all__ = [
    "BackdoorProbe", "PlannedAttack", "attack_links", "attackers", "backdoor_probe",
    "check_attacks", "choose_attackers", "poison_data",
]  # fmt: skip

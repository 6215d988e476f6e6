"""Device availability: dropouts (probability or trace) and stragglers, deterministic per round."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from fedge.core.errors import ConfigError
from fedge.system.network import check_number


def _check_probability(name: str, value: float) -> None:
    check_number(name, value)
    if value > 1:
        raise ConfigError(name, value, "a probability in [0, 1]")


def _uniform(seed: int, salt: str, node_id: str, round_index: int) -> float:
    """A reproducible U[0, 1) draw keyed by (seed, salt, node, round), independent of call order."""
    digest = hashlib.sha256(f"{seed}:{salt}:{node_id}:{round_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class Availability:
    """Which devices take part in which round, and which ones straggle.

    A device is OFF in a round if the round is in its ``trace`` entry, or else with probability
    ``dropout_prob`` (``per_node_dropout`` overrides it per node). Both rules combine: a trace
    forces absence, the probability adds random dropouts. A straggler (probability
    ``straggler_prob``) computes ``straggler_slowdown`` times slower in that round.
    """

    dropout_prob: float = 0.0
    seed: int = 0
    trace: Mapping[str, frozenset[int]] | None = None
    per_node_dropout: Mapping[str, float] | None = None
    straggler_prob: float = 0.0
    straggler_slowdown: float = 1.0

    def __post_init__(self) -> None:
        _check_probability("Availability.dropout_prob", self.dropout_prob)
        for node, p in (self.per_node_dropout or {}).items():
            _check_probability(f"Availability.per_node_dropout[{node}]", p)
        _check_probability("Availability.straggler_prob", self.straggler_prob)
        check_number("Availability.straggler_slowdown", self.straggler_slowdown, minimum=1.0)

    def is_available(self, node_id: str, round_index: int) -> bool:
        """True if ``node_id`` takes part in round ``round_index``."""
        if self.trace is not None and round_index in self.trace.get(node_id, frozenset()):
            return False
        p = self.dropout_prob
        if self.per_node_dropout is not None:
            p = self.per_node_dropout.get(node_id, p)
        return p <= 0 or _uniform(self.seed, "dropout", node_id, round_index) >= p

    def slowdown(self, node_id: str, round_index: int) -> float:
        """Factor (>= 1) by which ``node_id``'s computation is slowed in this round."""
        if self.straggler_prob <= 0:
            return 1.0
        straggles = _uniform(self.seed, "straggler", node_id, round_index) < self.straggler_prob
        return self.straggler_slowdown if straggles else 1.0

"""Energy: the per-operation formula and a ledger that sums it by node, tier and kind."""

from __future__ import annotations

from collections import defaultdict

from fedge.core.errors import ConfigError
from fedge.system.compute import ComputeProfile
from fedge.system.network import check_number

TIERS = ("cloud", "edge", "device")
ENERGY_KINDS = ("compute", "radio")


def energy_j(
    profile: ComputeProfile,
    busy_s: float,
    flops: float,
    tx_power_w: float = 0.0,
    airtime_s: float = 0.0,
) -> float:
    """Static power × busy time + energy per FLOP × FLOPs + transmit power × airtime."""
    check_number("busy_s", busy_s)
    check_number("flops", flops)
    check_number("tx_power_w", tx_power_w)
    check_number("airtime_s", airtime_s)
    return (
        profile.static_power_w * busy_s + profile.energy_per_flop_j * flops + tx_power_w * airtime_s
    )


class EnergyLedger:
    """Accumulates charged energy; totals by tier, node and kind (compute | radio)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, str], float] = defaultdict(float)

    def charge(self, node_id: str, tier: str, kind: str, energy_j: float) -> None:
        """Add ``energy_j`` joules spent by ``node_id`` (of ``tier``) on ``kind``."""
        if tier not in TIERS:
            raise ConfigError("tier", tier, " | ".join(TIERS))
        if kind not in ENERGY_KINDS:
            raise ConfigError("kind", kind, " | ".join(ENERGY_KINDS))
        check_number("energy_j", energy_j)
        self._entries[(node_id, tier, kind)] += float(energy_j)

    def total_j(self) -> float:
        """All energy charged so far, in joules."""
        return sum(self._entries.values())

    def by_tier(self) -> dict[str, float]:
        """Joules per tier (only tiers that were charged)."""
        return self._sum(1)

    def by_node(self) -> dict[str, float]:
        """Joules per node id."""
        return self._sum(0)

    def by_kind(self) -> dict[str, float]:
        """Joules per kind: compute and radio."""
        return self._sum(2)

    def by_tier_kind(self) -> dict[str, dict[str, float]]:
        """Joules per tier, split by kind."""
        out: dict[str, dict[str, float]] = {}
        for (_, tier, kind), value in self._entries.items():
            per_kind = out.setdefault(tier, {})
            per_kind[kind] = per_kind.get(kind, 0.0) + value
        return out

    def _sum(self, position: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, value in self._entries.items():
            out[key[position]] = out.get(key[position], 0.0) + value
        return out

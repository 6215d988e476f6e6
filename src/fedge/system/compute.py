"""Compute profiles of nodes and the time a computation takes on them."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.system.network import check_number

GIB = 1024**3


@dataclass(frozen=True)
class ComputeProfile:
    """What a node can compute: FLOP/s, memory, static power and energy per FLOP."""

    flops_per_s: float
    memory_bytes: float
    static_power_w: float = 0.0
    energy_per_flop_j: float = 0.0

    def __post_init__(self) -> None:
        check_number("ComputeProfile.flops_per_s", self.flops_per_s, strict=True)
        check_number("ComputeProfile.memory_bytes", self.memory_bytes, strict=True)
        check_number("ComputeProfile.static_power_w", self.static_power_w)
        check_number("ComputeProfile.energy_per_flop_j", self.energy_per_flop_j)


def compute_time_s(flops: float, profile: ComputeProfile) -> float:
    """Seconds to execute ``flops`` floating-point operations: flops / FLOP/s."""
    check_number("flops", flops)
    return flops / profile.flops_per_s

"""Pure pieces of collaborative cloud-edge training (seed 004 §2): cloud dormancy and U_i.

Cloud dormancy: the edge measures the real-time delay T_rd of each exchange with the cloud
and compares it with T0. The paper switches at T_rd > T0 (dormant) and T_rd <= T0
(collaborative); we add a hysteresis band h so a delay hovering around T0 does not flap:
dormant when T_rd > T0·(1 + h), collaborative again when T_rd <= T0·(1 − h); inside the
band the mode stays as it is. h = 0 is the paper's rule. T0 <= 0 disables dormancy.

U_i weighting: "U_i is the number of tasks performed by node i per unit time". We count
tasks as training samples and time as the simulated time edge i spent in the round (from
the round's request to its reply's arrival), so U_i = samples_i / elapsed_i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedge.core.errors import ConfigError


@dataclass
class DormancySwitch:
    """Collaborative / dormant mode from measured edge→cloud delays, with hysteresis."""

    t0_s: float
    hysteresis: float = 0.2
    dormant: bool = False
    switches: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.hysteresis < 1.0:
            raise ConfigError("split.hysteresis", self.hysteresis, "a number in [0, 1)")

    @property
    def enabled(self) -> bool:
        return self.t0_s > 0

    def observe(self, t_rd_s: float) -> bool:
        """Feed one measured delay; returns True when the cloud is now dormant."""
        if not self.enabled:
            return False
        if not self.dormant and t_rd_s > self.t0_s * (1.0 + self.hysteresis):
            self.dormant = True
            self.switches += 1
        elif self.dormant and t_rd_s <= self.t0_s * (1.0 - self.hysteresis):
            self.dormant = False
            self.switches += 1
        return self.dormant


def throughput_weights(tasks: Sequence[float], elapsed_s: Sequence[float]) -> list[float]:
    """U_i = tasks_i / elapsed_i, the aggregation weights of seed 004.

    When some node reports no elapsed time (an engine without a clock) the weights fall
    back to the task counts, i.e. FedAvg's data-size weighting.
    """
    if len(tasks) != len(elapsed_s):
        raise ValueError(f"{len(tasks)} task counts but {len(elapsed_s)} durations")
    if any(t < 0 for t in tasks):
        raise ValueError(f"task counts must be >= 0, got {list(tasks)}")
    if any(e <= 0 for e in elapsed_s):
        return [float(t) for t in tasks]
    return [float(t) / float(e) for t, e in zip(tasks, elapsed_s, strict=True)]

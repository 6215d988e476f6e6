"""Links: wired profiles with latency traces, wireless Shannon rate, path loss, transfer time."""

from __future__ import annotations

import bisect
import csv
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

from fedge.core.errors import ConfigError

PATH_LOSS_MODELS = ("3gpp_uma", "log_distance")


def check_number(name: str, value: float, *, minimum: float = 0.0, strict: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite number >= (or > when strict) ``minimum``."""
    op = ">" if strict else ">="
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        raise ConfigError(name, value, f"a finite number {op} {minimum:g}")


@dataclass(frozen=True)
class LatencyTrace:
    """A piecewise-constant latency: ``latencies_s[i]`` holds from ``times_s[i]`` on.

    Before the first time the first latency applies (the trace is extended backwards).
    """

    times_s: tuple[float, ...]
    latencies_s: tuple[float, ...]

    def __post_init__(self) -> None:
        times, lats = tuple(self.times_s), tuple(self.latencies_s)
        if not times or len(times) != len(lats):
            raise ConfigError(
                "LatencyTrace",
                (len(times), len(lats)),
                "non-empty times_s and latencies_s of equal length",
            )
        for i, t in enumerate(times):
            check_number(f"LatencyTrace.times_s[{i}]", t, minimum=-math.inf)
            if i and t <= times[i - 1]:
                raise ConfigError(f"LatencyTrace.times_s[{i}]", t, "strictly increasing times")
        for i, v in enumerate(lats):
            check_number(f"LatencyTrace.latencies_s[{i}]", v)
        object.__setattr__(self, "times_s", tuple(float(t) for t in times))
        object.__setattr__(self, "latencies_s", tuple(float(v) for v in lats))

    def latency_at(self, t_s: float) -> float:
        """The latency in force at time ``t_s``."""
        i = bisect.bisect_right(self.times_s, t_s) - 1
        return self.latencies_s[max(i, 0)]

    @staticmethod
    def from_csv(path: str | Path) -> LatencyTrace:
        """Read a CSV file with a header and the columns ``time_s,latency_s``."""
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = set(reader.fieldnames or ())
            if not {"time_s", "latency_s"} <= cols:
                raise ConfigError(f"{path} columns", sorted(cols), "time_s and latency_s")
            times: list[float] = []
            lats: list[float] = []
            for row_no, row in enumerate(reader, start=2):
                try:
                    times.append(float(row["time_s"]))
                    lats.append(float(row["latency_s"]))
                except (TypeError, ValueError):
                    raise ConfigError(f"{path} line {row_no}", row, "two numbers") from None
        return LatencyTrace(tuple(times), tuple(lats))


@dataclass(frozen=True)
class LinkProfile:
    """A wired link (WAN or backhaul): bandwidth, base latency, optional latency trace.

    When a trace is given it replaces ``latency_s`` (the trace is the measured latency).
    """

    bandwidth_bps: float
    latency_s: float = 0.0
    trace: LatencyTrace | None = None

    def __post_init__(self) -> None:
        check_number("LinkProfile.bandwidth_bps", self.bandwidth_bps, strict=True)
        check_number("LinkProfile.latency_s", self.latency_s)

    def latency_at(self, t_s: float) -> float:
        """The one-way latency of a transfer that starts at ``t_s``."""
        return self.trace.latency_at(t_s) if self.trace is not None else self.latency_s


@dataclass(frozen=True)
class PathLoss:
    """Distance -> path loss in dB.

    ``3gpp_uma``: PL = 128.1 + 37.6·log10(d_km) (3GPP TR 36.814 macro cell, 2 GHz).
    ``log_distance``: PL = ref_loss_db + 10·exponent·log10(d / ref_distance_m).
    Distances below ``min_distance_m`` are clamped to it (avoids infinite gain at d = 0).
    """

    model: str = "3gpp_uma"
    ref_loss_db: float = 40.0
    exponent: float = 3.0
    ref_distance_m: float = 1.0
    min_distance_m: float = 1.0

    def __post_init__(self) -> None:
        if self.model not in PATH_LOSS_MODELS:
            raise ConfigError("PathLoss.model", self.model, " | ".join(PATH_LOSS_MODELS))
        check_number("PathLoss.ref_loss_db", self.ref_loss_db, minimum=-math.inf)
        check_number("PathLoss.exponent", self.exponent)
        check_number("PathLoss.ref_distance_m", self.ref_distance_m, strict=True)
        check_number("PathLoss.min_distance_m", self.min_distance_m, strict=True)

    def loss_db(self, distance_m: float) -> float:
        """Path loss in dB at ``distance_m``."""
        check_number("distance_m", distance_m)
        d_m = max(distance_m, self.min_distance_m)
        if self.model == "3gpp_uma":
            return 128.1 + 37.6 * math.log10(d_m / 1000.0)
        return self.ref_loss_db + 10.0 * self.exponent * math.log10(d_m / self.ref_distance_m)


def path_gain(distance_m: float, path_loss: PathLoss) -> float:
    """Linear channel gain 10^(-PL/10) at ``distance_m``."""
    return float(10.0 ** (-path_loss.loss_db(distance_m) / 10.0))


@dataclass(frozen=True)
class WirelessProfile:
    """The device<->edge radio: each device gets its own ``bandwidth_hz`` (no sharing).

    Interpretation: orthogonal sub-channels (FDMA), so rates do not depend on how many devices
    transmit at once; ``latency_s`` is a fixed access delay added to every wireless hop.
    """

    bandwidth_hz: float = 1e6
    device_tx_power_w: float = 0.2
    edge_tx_power_w: float = 1.0
    noise_psd_w_per_hz: float = 10 ** (-174 / 10) / 1000
    path_loss: PathLoss = field(default_factory=PathLoss)
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        check_number("WirelessProfile.bandwidth_hz", self.bandwidth_hz, strict=True)
        check_number("WirelessProfile.device_tx_power_w", self.device_tx_power_w, strict=True)
        check_number("WirelessProfile.edge_tx_power_w", self.edge_tx_power_w, strict=True)
        check_number("WirelessProfile.noise_psd_w_per_hz", self.noise_psd_w_per_hz, strict=True)
        check_number("WirelessProfile.latency_s", self.latency_s)

    def rate_bps(self, distance_m: float, uplink: bool) -> float:
        """Shannon rate at ``distance_m``; uplink uses the device's power, downlink the edge's."""
        power_w = self.device_tx_power_w if uplink else self.edge_tx_power_w
        gain = path_gain(distance_m, self.path_loss)
        return shannon_rate_bps(self.bandwidth_hz, power_w, gain, self.noise_psd_w_per_hz)


def shannon_rate_bps(
    bandwidth_hz: float, tx_power_w: float, gain: float, noise_psd_w_per_hz: float
) -> float:
    """Shannon capacity r = B·log2(1 + P·g / (N0·B)) in bit/s."""
    check_number("bandwidth_hz", bandwidth_hz, strict=True)
    check_number("tx_power_w", tx_power_w)
    check_number("gain", gain)
    check_number("noise_psd_w_per_hz", noise_psd_w_per_hz, strict=True)
    snr = tx_power_w * gain / (noise_psd_w_per_hz * bandwidth_hz)
    return bandwidth_hz * math.log1p(snr) / math.log(2.0)


def transfer_time_s(nbytes: int, rate_bps: float, latency_s: float = 0.0) -> float:
    """Seconds to move ``nbytes`` at ``rate_bps`` plus a fixed delay: 8·nbytes/rate + latency_s."""
    check_number("nbytes", nbytes)
    check_number("rate_bps", rate_bps, strict=True)
    check_number("latency_s", latency_s)
    return 8.0 * nbytes / rate_bps + latency_s

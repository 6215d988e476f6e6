"""Shared links: transfers that overlap in time share the capacity of the link they cross.

A link a transfer crosses is a *resource*: a cell's uplink or downlink (every device
attached to an edge shares its wireless band), the WAN in each direction (every edge's
traffic to or from the cloud), a backhaul link in each direction (edge a -> edge b). Direct
device-to-device hops use their own radio pair and are not shared.

Policies (``system.links.policy``):

- ``equal`` (default): processor sharing. While n transfers are active on a resource, each
  gets 1/n of it: a wired transfer moves at bandwidth / n; a wireless one at its own Shannon
  rate / n (the cell's band is time-shared, so a far device still goes at its own, lower
  rate in its share). Rates are recomputed every time a transfer starts or finishes.
- ``fixed``: per-device fixed allocation: the resource is cut into ``slots`` equal channels
  and every transfer holds one (rate / slots) whether or not others are active; transfers do
  not affect each other (more concurrent transfers than slots are not queued).

The computation is a fluid (bit-level) event simulation of a batch of flows, each a route
of hops taken store-and-forward: a hop transmits its bytes on its resource, then its
propagation latency passes, then the next hop starts. A hop's full rate and latency are
asked when it starts (a moving device's rate follows its position then). A transmitting
device's radio is on for bytes / its full rate in total (its own share of the air time), so
radio energy does not change with sharing; the hop's duration does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

from fedge.core.errors import ConfigError

Policy = Literal["equal", "fixed"]
POLICIES: tuple[str, ...] = ("equal", "fixed")


@dataclass(frozen=True)
class LinkSharing:
    """How overlapping transfers share links: ``shared=False`` gives every transfer the full
    capacity of its link (each transfer priced alone)."""

    shared: bool = True
    policy: Policy = "equal"
    slots: int = 1

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError("system.links.policy", self.policy, " | ".join(POLICIES))
        if self.slots < 1:
            raise ConfigError("system.links.slots", self.slots, "an integer >= 1")
        if self.policy == "equal" and self.slots != 1:
            raise ConfigError("system.links.slots", self.slots, "1 unless policy = 'fixed'")


@dataclass(frozen=True)
class Channel:
    """A hop as the fluid model sees it: the resource it shares (None: not shared), the
    full rate it would get alone, and the propagation latency after its last bit."""

    resource: Hashable | None
    rate_bps: float
    latency_s: float


@dataclass(frozen=True)
class FlowSpec:
    """A transfer: its hops (node pairs, in order), its size and when it starts."""

    hops: tuple[tuple[str, str], ...]
    nbytes: int
    start_s: float


@dataclass(frozen=True)
class HopTiming:
    """When a hop started, when its last byte arrived (after the latency), and its air time
    at full rate (bytes / full rate: what the sender's radio is on for)."""

    start_s: float
    end_s: float
    airtime_s: float


ChannelAt = Callable[[str, str, float], Channel]
"""(hop source, hop destination, hop start time) -> the hop's channel."""


@dataclass
class _State:
    index: int
    spec: FlowSpec
    hop: int
    ready_s: float  # when the current hop starts (or math.inf while transmitting / done)
    channel: Channel | None = None
    remaining_bits: float = 0.0
    hop_start_s: float = 0.0


def share(
    flows: Sequence[FlowSpec], channel_at: ChannelAt, sharing: LinkSharing
) -> list[list[HopTiming]]:
    """The hop timings of every flow when the flows share their resources per ``sharing``.

    Exact for the fluid model: between two events (a hop starting or finishing) the set of
    active transfers is fixed, so every transfer's rate is constant.
    """
    states = [_State(i, f, 0, f.start_s if f.hops else math.inf) for i, f in enumerate(flows)]
    out: list[list[HopTiming]] = [[] for _ in flows]
    now = min((s.ready_s for s in states), default=math.inf)
    while True:
        for s in states:
            if s.ready_s <= now:
                _begin(s, now, channel_at, out)
        active = [s for s in states if s.channel is not None]
        pending = min((s.ready_s for s in states), default=math.inf)
        if not active and math.isinf(pending):
            return out
        speeds = _speeds(active, sharing)
        finish = [s.remaining_bits / v for s, v in zip(active, speeds, strict=True)]
        step = min(min(finish, default=math.inf), pending - now)
        for s, v, f in zip(active, speeds, finish, strict=True):
            if f <= step:
                _end(s, now + f, out)
            else:
                s.remaining_bits -= v * step
        now += step


def _begin(s: _State, now: float, channel_at: ChannelAt, out: list[list[HopTiming]]) -> None:
    a, b = s.spec.hops[s.hop]
    s.channel = channel_at(a, b, now)
    s.remaining_bits = 8.0 * s.spec.nbytes
    s.hop_start_s, s.ready_s = now, math.inf
    if s.remaining_bits == 0:
        _end(s, now, out)


def _end(s: _State, t_s: float, out: list[list[HopTiming]]) -> None:
    """The current hop's last bit left at ``t_s``; the next hop starts after the latency."""
    assert s.channel is not None
    end_s = t_s + s.channel.latency_s
    airtime_s = 8.0 * s.spec.nbytes / s.channel.rate_bps
    out[s.index].append(HopTiming(s.hop_start_s, end_s, airtime_s))
    s.channel, s.remaining_bits = None, 0.0
    s.hop += 1
    s.ready_s = end_s if s.hop < len(s.spec.hops) else math.inf


def _speeds(active: Sequence[_State], sharing: LinkSharing) -> list[float]:
    """Each active transfer's rate: its full rate over the transfers on its resource
    (``equal``) or over the resource's slots (``fixed``); unshared hops go at full rate."""
    counts: dict[Hashable, int] = {}
    for s in active:
        assert s.channel is not None
        if s.channel.resource is not None:
            counts[s.channel.resource] = counts.get(s.channel.resource, 0) + 1
    speeds = []
    for s in active:
        assert s.channel is not None
        key = s.channel.resource
        per_resource = counts.get(key, 1) if sharing.policy == "equal" else sharing.slots
        divisor = 1 if key is None else per_resource
        speeds.append(s.channel.rate_bps / divisor)
    return speeds

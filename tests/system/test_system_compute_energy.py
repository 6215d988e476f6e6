"""Compute time, the energy formula and the energy ledger."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.core.errors import ConfigError
from fedge.system import ComputeProfile, EnergyLedger, compute_time_s, energy_j

nonneg = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


def test_compute_time_is_flops_over_flops_per_s() -> None:
    profile = ComputeProfile(flops_per_s=2e9, memory_bytes=1e9)
    assert compute_time_s(4e9, profile) == pytest.approx(2.0)
    assert compute_time_s(0.0, profile) == 0.0
    with pytest.raises(ConfigError, match="flops"):
        compute_time_s(-1.0, profile)


def test_zero_flops_per_s_names_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        ComputeProfile(flops_per_s=0.0, memory_bytes=1.0)
    assert err.value.field == "ComputeProfile.flops_per_s"
    assert err.value.value == 0.0
    with pytest.raises(ConfigError, match="static_power_w"):
        ComputeProfile(1.0, 1.0, static_power_w=-1.0)


def test_energy_by_hand() -> None:
    profile = ComputeProfile(1e9, 1e9, static_power_w=2.0, energy_per_flop_j=1e-9)
    # 2 W * 3 s + 1e-9 J * 1e9 + 0.5 W * 4 s = 6 + 1 + 2
    assert energy_j(profile, busy_s=3.0, flops=1e9, tx_power_w=0.5, airtime_s=4.0) == 9.0


@settings(max_examples=80, deadline=None)
@given(nonneg, nonneg, nonneg, nonneg, nonneg, st.floats(min_value=0.0, max_value=1e-6))
def test_energy_formula(
    static_w: float, busy_s: float, flops: float, power_w: float, air_s: float, e_flop: float
) -> None:
    profile = ComputeProfile(1e9, 1e9, static_power_w=static_w, energy_per_flop_j=e_flop)
    e = energy_j(profile, busy_s, flops, power_w, air_s)
    assert e == pytest.approx(static_w * busy_s + e_flop * flops + power_w * air_s)
    assert e >= 0.0
    # additive in busy time / flops / airtime
    half = energy_j(profile, busy_s / 2, flops / 2, power_w, air_s / 2)
    assert 2 * half == pytest.approx(e, rel=1e-9, abs=1e-12)


def test_ledger_sums_by_tier_node_and_kind() -> None:
    ledger = EnergyLedger()
    ledger.charge("dev0", "device", "compute", 1.0)
    ledger.charge("dev0", "device", "radio", 0.5)
    ledger.charge("dev1", "device", "compute", 2.0)
    ledger.charge("edge0", "edge", "radio", 4.0)
    assert ledger.total_j() == 7.5
    assert ledger.by_tier() == {"device": 3.5, "edge": 4.0}
    assert ledger.by_node() == {"dev0": 1.5, "dev1": 2.0, "edge0": 4.0}
    assert ledger.by_kind() == {"compute": 3.0, "radio": 4.5}
    assert ledger.by_tier_kind()["device"] == {"compute": 3.0, "radio": 0.5}


def test_ledger_rejects_bad_input() -> None:
    ledger = EnergyLedger()
    with pytest.raises(ConfigError, match="kind"):
        ledger.charge("dev0", "device", "thermal", 1.0)
    with pytest.raises(ConfigError) as err:
        ledger.charge("x", "fog", "compute", 1.0)
    assert err.value.field == "tier"
    with pytest.raises(ConfigError, match="energy_j"):
        ledger.charge("dev0", "device", "compute", -1.0)
    assert ledger.total_j() == 0.0

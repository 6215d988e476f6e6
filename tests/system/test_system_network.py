"""Links: path loss, Shannon rate, transfer time, latency traces and validation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.core.errors import ConfigError
from fedge.system import (
    LatencyTrace,
    LinkProfile,
    PathLoss,
    WirelessProfile,
    path_gain,
    shannon_rate_bps,
    transfer_time_s,
)

FAST = settings(max_examples=80, deadline=None)
positive = st.floats(min_value=1e-3, max_value=1e9, allow_nan=False, allow_infinity=False)


def test_3gpp_uma_path_loss_at_one_km() -> None:
    pl = PathLoss()
    assert pl.loss_db(1000.0) == pytest.approx(128.1)
    assert pl.loss_db(100.0) == pytest.approx(128.1 - 37.6)
    assert path_gain(1000.0, pl) == pytest.approx(10 ** (-12.81))
    # below min_distance_m the distance is clamped
    assert pl.loss_db(0.0) == pl.loss_db(1.0)


def test_log_distance_path_loss() -> None:
    pl = PathLoss(model="log_distance", ref_loss_db=40.0, exponent=3.0, ref_distance_m=1.0)
    assert pl.loss_db(100.0) == pytest.approx(100.0)
    assert path_gain(100.0, pl) == pytest.approx(1e-10)


def test_unknown_path_loss_model_names_field() -> None:
    with pytest.raises(ConfigError) as err:
        PathLoss(model="free_space")
    assert err.value.field == "PathLoss.model"
    assert "3gpp_uma" in err.value.allowed


def test_hand_computed_shannon_rate() -> None:
    # SNR = 0.2 W * 1e-10 / (1e-20 W/Hz * 1 MHz) = 2000; r = 1e6 * log2(2001)
    rate = shannon_rate_bps(1e6, 0.2, 1e-10, 1e-20)
    assert rate == pytest.approx(10.966505451905741e6, rel=1e-9)
    assert shannon_rate_bps(1e6, 0.0, 1e-10, 1e-20) == 0.0


def test_wireless_profile_rate_uses_tier_power() -> None:
    w = WirelessProfile()
    up, down = w.rate_bps(500.0, uplink=True), w.rate_bps(500.0, uplink=False)
    assert down > up > 0
    gain = path_gain(500.0, w.path_loss)
    assert up == pytest.approx(
        shannon_rate_bps(w.bandwidth_hz, w.device_tx_power_w, gain, w.noise_psd_w_per_hz)
    )


@FAST
@given(positive, st.floats(min_value=1.0, max_value=100.0), positive, positive)
def test_shannon_monotone_in_bandwidth(bw: float, factor: float, power: float, gain: float) -> None:
    n0 = 1e-20
    assert shannon_rate_bps(bw * factor, power, gain * 1e-12, n0) >= shannon_rate_bps(
        bw, power, gain * 1e-12, n0
    ) * (1 - 1e-12)


@FAST
@given(positive, positive, st.floats(min_value=1.0, max_value=100.0), positive)
def test_shannon_monotone_in_power(bw: float, power: float, factor: float, gain: float) -> None:
    n0 = 1e-20
    low = shannon_rate_bps(bw, power, gain * 1e-12, n0)
    assert shannon_rate_bps(bw, power * factor, gain * 1e-12, n0) >= low * (1 - 1e-12)


@FAST
@given(
    st.floats(min_value=1.0, max_value=20_000.0),
    st.floats(min_value=1.0001, max_value=10.0),
    st.sampled_from(["3gpp_uma", "log_distance"]),
)
def test_rate_decreases_with_distance(d_m: float, factor: float, model: str) -> None:
    w = WirelessProfile(path_loss=PathLoss(model=model))
    for uplink in (True, False):
        assert w.rate_bps(d_m * factor, uplink) <= w.rate_bps(d_m, uplink)
    assert w.rate_bps(d_m * factor + 10.0, True) < w.rate_bps(d_m, True)


@FAST
@given(
    st.integers(min_value=0, max_value=10**10),
    st.floats(min_value=1.0, max_value=1e11),
    st.floats(min_value=0.0, max_value=10.0),
)
def test_transfer_time_is_bytes_over_rate_plus_latency(n: int, rate: float, lat: float) -> None:
    t = transfer_time_s(n, rate, lat)
    assert t == pytest.approx(8.0 * n / rate + lat, rel=1e-12, abs=1e-15)
    assert t >= lat


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nbytes": -1, "rate_bps": 1.0}, "nbytes"),
        ({"nbytes": 1, "rate_bps": 0.0}, "rate_bps"),
        ({"nbytes": 1, "rate_bps": 1.0, "latency_s": -0.1}, "latency_s"),
    ],
)
def test_transfer_time_rejects_bad_values(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        transfer_time_s(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_negative_bandwidth_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        LinkProfile(bandwidth_bps=-5.0)
    assert err.value.field == "LinkProfile.bandwidth_bps"
    assert err.value.value == -5.0
    assert "> 0" in str(err.value)
    with pytest.raises(ConfigError, match=r"WirelessProfile\.bandwidth_hz"):
        WirelessProfile(bandwidth_hz=0.0)
    with pytest.raises(ConfigError, match="latency_s"):
        LinkProfile(1e6, latency_s=math.nan)


def test_latency_trace_step_function() -> None:
    trace = LatencyTrace((0.0, 10.0, 20.0), (0.05, 0.5, 0.1))
    assert trace.latency_at(-1.0) == 0.05
    assert trace.latency_at(0.0) == 0.05
    assert trace.latency_at(9.999) == 0.05
    assert trace.latency_at(10.0) == 0.5
    assert trace.latency_at(19.0) == 0.5
    assert trace.latency_at(1e6) == 0.1
    link = LinkProfile(1e8, latency_s=0.01, trace=trace)
    assert link.latency_at(15.0) == 0.5
    assert LinkProfile(1e8, latency_s=0.01).latency_at(15.0) == 0.01


def test_latency_trace_validation() -> None:
    with pytest.raises(ConfigError, match=r"times_s\[1\]"):
        LatencyTrace((0.0, 0.0), (0.1, 0.2))
    with pytest.raises(ConfigError, match=r"latencies_s\[0\]"):
        LatencyTrace((0.0,), (-0.1,))
    with pytest.raises(ConfigError):
        LatencyTrace((0.0, 1.0), (0.1,))


def test_latency_trace_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "wan.csv"
    path.write_text("time_s,latency_s\n0,0.05\n30,1.5\n60,0.05\n")
    trace = LatencyTrace.from_csv(path)
    assert trace.times_s == (0.0, 30.0, 60.0)
    assert trace.latency_at(45.0) == 1.5
    bad = tmp_path / "bad.csv"
    bad.write_text("t,lat\n0,1\n")
    with pytest.raises(ConfigError, match="columns"):
        LatencyTrace.from_csv(bad)

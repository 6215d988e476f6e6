"""Secure aggregation as messages, on the tiny digits config: the round's model equals the
plain FedAvg model up to the fixed-point step (with and without dropouts, SecAgg and
SecAgg+, cloud-only and hierarchical), the bytes charged are the encoded messages', what
the server receives from a device looks uniform, and bad settings fail clearly."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import TINY
from fedge.aggregation.secagg import SecAggError, from_wire
from fedge.core.errors import ConfigError
from fedge.experiment.build import Experiment, build
from fedge.experiment.config import apply_overrides, parse_config

SECURE = ["secure_aggregation.enabled=true"]


def _build(*overrides: str) -> Experiment:
    return build(parse_config(apply_overrides(tomllib.loads(TINY), overrides)))


def _record(exp: Experiment) -> list[tuple[object, object]]:
    """Every (request, reply) the node set delivers (at any depth)."""
    seen: list[tuple[object, object]] = []
    deliver = exp.nodes.deliver

    def recording(message, downstream):  # type: ignore[no-untyped-def]
        reply, work = deliver(message, downstream)
        seen.append((message, reply))
        return reply, work

    exp.nodes.deliver = recording  # type: ignore[method-assign]
    return seen


def _one_round(exp: Experiment) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    state, metrics, _ = exp.coordinator.round(exp.transport, exp.initial_state, exp.rng, 1)
    return state, metrics


def _step_bound(exp: Experiment, metrics: dict[str, float], weight: float) -> float:
    """Error bound of the mean update: half a fixed-point step per device over Σ w, plus
    float32 rounding of the model."""
    secure = exp.coordinator.secure
    return metrics["participants"] * 2.0**-secure.scale_bits / 2 / weight + 2e-6


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("dropout", [0.0, 0.34])
def test_secure_round_equals_the_plain_round(dropout: float) -> None:
    cohort = ["federation.clients_per_round=9"]
    plain, plain_metrics = _one_round(_build(*cohort))
    exp = _build(*cohort, *SECURE, f"secure_aggregation.dropout_after_masking={dropout}")
    seen = _record(exp)
    state, metrics = _one_round(exp)
    assert metrics["participants"] == 9
    assert metrics["secagg_dropped_after_masking"] == (3 if dropout else 0)
    unmask = [m for m, _ in seen if m.kind == "secagg_unmask"]
    assert len(unmask) == 9 - metrics["secagg_dropped_after_masking"]
    sizes = [len(p) for p in exp.parts]
    chosen = [m.dst for m, _ in seen if m.kind == "train"]
    weight = float(sum(sizes[int(d.removeprefix("dev"))] for d in chosen))
    assert _max_diff(state, plain) <= _step_bound(exp, metrics, weight)
    assert metrics["train_loss"] == pytest.approx(plain_metrics["train_loss"], abs=1e-3)


def test_below_the_threshold_the_round_fails_naming_it() -> None:
    exp = _build(
        "federation.clients_per_round=9", *SECURE, "secure_aggregation.dropout_after_masking=0.45"
    )
    with pytest.raises(SecAggError, match=r"t=6 shares, 5 of its share-holders.*survivors: 5"):
        _one_round(exp)


def test_secagg_plus_recovers_the_sum_with_fewer_bytes() -> None:
    cohort = ["federation.clients_per_round=10"]
    plain, _ = _one_round(_build(*cohort))
    full = _build(*cohort, *SECURE, "secure_aggregation.dropout_after_masking=0.2")
    _one_round(full)
    plus = _build(
        *cohort,
        *SECURE,
        'secure_aggregation.mode="secagg+"',
        "secure_aggregation.degree=4",
        "secure_aggregation.threshold=0.6",  # t=3 of 5 holders: two may drop per neighbourhood
        "secure_aggregation.dropout_after_masking=0.2",
    )
    seen = _record(plus)
    state, metrics = _one_round(plus)
    shares = [m for m, _ in seen if m.kind == "secagg_share"]
    assert all(len(m.payload["ids"]) == 5 for m in shares)  # 4 neighbours and itself
    weight = float(sum(len(plus.parts[int(m.dst.removeprefix("dev"))]) for m in shares))
    assert metrics["secagg_dropped_after_masking"] == 2
    assert _max_diff(state, plain) <= _step_bound(plus, metrics, weight)
    key = "bytes_up_device_edge"
    assert plus.transport.stats()[key] < full.transport.stats()[key]


def test_bytes_charged_are_the_encoded_messages() -> None:
    exp = _build(*SECURE)
    seen = _record(exp)
    _one_round(exp)
    stats_ = exp.transport.stats()
    kinds = {m.kind for m, _ in seen}
    assert kinds == {"secagg_keys", "secagg_share", "train", "secagg_unmask"}
    assert stats_["bytes_down_device_edge"] == sum(len(m.encode()) for m, _ in seen)
    assert stats_["bytes_up_device_edge"] == sum(len(r.encode()) for _, r in seen)
    assert stats_["messages"] == 2 * len(seen)


def test_what_the_server_receives_looks_uniform() -> None:
    exp = _build(*SECURE)
    seen = _record(exp)
    _one_round(exp)
    train = [(m, r) for m, r in seen if m.kind == "train"]
    request, reply = train[0]
    y = from_wire(reply.payload["update"].state["masked"].numpy(), 32).astype(np.float64)
    assert stats.kstest(y / 2.0**32, "uniform").pvalue > 1e-4
    # the device's own update (what it would have sent in the clear)
    model = request.payload["model"].state
    plain_reply = exp.nodes.apps[request.dst].respond(
        request, exp.nodes.apps[request.dst].context(exp.nodes.seed, request, None)
    )
    x = torch.cat(
        [(plain_reply.payload["update"].state[k] - model[k]).reshape(-1) for k in model]
    ).double()
    assert abs(stats.pearsonr(x.numpy(), y[: x.numel()]).statistic) < 0.05
    assert "weight" not in reply.payload and reply.payload["update"].weight == 1.0
    assert reply.payload["update"].metrics == {}


@pytest.mark.parametrize("algorithm", ["hierarchical", "single_server"])
def test_edges_run_it_over_their_devices(algorithm: str) -> None:
    over = [f'algorithm="{algorithm}"', "federation.clients_per_edge=4"]
    plain = _build(*over)
    hist0 = plain.coordinator.run(plain.transport, plain.initial_state, plain.rng, rounds=1)
    exp = _build(*over, *SECURE, "secure_aggregation.dropout_after_masking=0.25")
    seen = _record(exp)
    hist = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, rounds=1)
    assert {m.src for m, _ in seen if m.kind == "secagg_keys"} == {"edge0", "edge1"}
    assert _max_diff(hist.final_state, hist0.final_state) < 1e-5
    assert hist.metrics[0]["participants"] == hist0.metrics[0]["participants"]


def test_fedavg_run_with_secure_aggregation_matches_plain() -> None:
    exp = _build("rounds=3", *SECURE, 'federation.server_optimizer="fedavgm"')
    plain_m = _build("rounds=3", 'federation.server_optimizer="fedavgm"')
    h0 = plain_m.coordinator.run(plain_m.transport, plain_m.initial_state, plain_m.rng, rounds=3)
    h1 = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, rounds=3)
    assert _max_diff(h0.final_state, h1.final_state) < 1e-5
    assert [m["participants"] for m in h1.metrics] == [m["participants"] for m in h0.metrics]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("secure_aggregation.threshold=0.5", "secure_aggregation.threshold"),
        ("secure_aggregation.threshold=1.2", "secure_aggregation.threshold"),
        ("secure_aggregation.bits=80", "secure_aggregation.bits"),
        ('secure_aggregation.mode="secagg++"', "secure_aggregation.mode"),
        ("secure_aggregation.degree=3", "secure_aggregation.degree"),
        ("secure_aggregation.colour=1", "secure_aggregation.colour"),
    ],
)
def test_bad_settings_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(apply_overrides(tomllib.loads(TINY), [*SECURE, override]))
    assert err.value.field == field


@pytest.mark.parametrize(
    ("overrides", "field", "allowed"),
    [
        (["secure_aggregation.bits=16"], "secure_aggregation.bits", ">= 2"),
        (["secure_aggregation.max_weight=2"], "secure_aggregation.max_weight", ">= "),
        (['federation.aggregator="median"'], "federation.aggregator", "'mean'"),
        (['algorithm="dfl"'], "secure_aggregation.enabled", "false for algorithm 'dfl'"),
        (
            ["secure_aggregation.scale_bits=30"],
            "secure_aggregation.bits",
            "or a smaller scale_bits",
        ),
    ],
)
def test_settings_that_cannot_work_fail_before_training(
    overrides: list[str], field: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _build(*SECURE, *overrides)
    assert err.value.field == field and allowed in err.value.allowed


@pytest.mark.slow
def test_cli_exits_2_on_a_bad_threshold(tiny_config: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedge.cli",
            "run",
            str(tiny_config),
            "--set",
            "secure_aggregation.threshold=0.4",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "secure_aggregation.threshold" in out.stderr and "Traceback" not in out.stderr


def _drop_train_replies(exp: Experiment, lost: set[str]) -> None:
    """Lose the ``train`` replies of ``lost`` (late or crashed after the share stage)."""
    send = exp.transport.send

    def lossy(messages, deadline_s=None):  # type: ignore[no-untyped-def]
        replies = send(messages, deadline_s)
        return [m for m in replies if not (m.kind == "update" and m.src in lost)]

    exp.transport.send = lossy  # type: ignore[method-assign]


def test_devices_lost_before_masking_have_their_pair_masks_removed() -> None:
    cohort = ["federation.clients_per_round=9"]
    probe = _build(*cohort)
    seen = _record(probe)
    _one_round(probe)
    chosen = [m.dst for m, _ in seen if m.kind == "train"]
    lost = set(chosen[:2])
    plain = _build(*cohort)
    _drop_train_replies(plain, lost)
    expected, plain_metrics = _one_round(plain)
    exp = _build(*cohort, *SECURE, "secure_aggregation.dropout_after_masking=0.15")
    _drop_train_replies(exp, lost)
    state, metrics = _one_round(exp)
    assert metrics["secagg_dropped_before_masking"] == 2
    assert metrics["secagg_dropped_after_masking"] == 1
    assert metrics["participants"] == plain_metrics["participants"] == 7
    weight = float(sum(len(exp.parts[int(d.removeprefix("dev"))]) for d in chosen[2:]))
    assert _max_diff(state, expected) <= _step_bound(exp, metrics, weight)


def test_masking_comes_after_compression() -> None:
    topk = "compression=[{link='device-cloud', method='topk', ratio=0.1}]"
    plain = _build(topk)
    expected, _ = _one_round(plain)
    exp = _build(topk, *SECURE)
    seen = _record(exp)
    state, metrics = _one_round(exp)
    chosen = [m.dst for m, _ in seen if m.kind == "train"]
    weight = float(sum(len(exp.parts[int(d.removeprefix("dev"))]) for d in chosen))
    assert _max_diff(state, expected) <= _step_bound(exp, metrics, weight)
    masked = [r.payload["update"] for m, r in seen if m.kind == "train"]
    assert all(u.encoding is None and "masked" in u.state for u in masked)  # dense on the ring

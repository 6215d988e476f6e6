"""DP-FedAvg's mechanics: clipping, the noise's standard deviation, the fixed denominator,
adaptive clipping and local DP on the device, each against a hand computation."""

import math

import numpy as np
import pytest
import torch

from fedge.aggregation.pipeline import Aggregate, ServerPipeline
from fedge.aggregation.privacy import (
    ClipStage,
    NoisySumStage,
    geometric_clip_update,
    noisy_fraction,
    update_noise_multiplier,
    zero_aggregate,
)
from fedge.core.noise import clip_state, l2_norm
from fedge.core.update import Update
from fedge.transforms.privacy import RELEASES, LocalGaussian


def state(*values):
    return {"w": torch.tensor(values, dtype=torch.float32), "n": torch.tensor(3)}


def delta_update(*values):
    return Update(state(*values), weight=50.0, kind="delta", origin="d")


def std_tolerance(n):
    """Five standard errors of a sample std of n normal draws (se ≈ σ/√(2n))."""
    return 5.0 / math.sqrt(2 * n)


def test_every_clipped_update_has_norm_at_most_c_and_small_ones_are_untouched():
    gen = torch.Generator().manual_seed(0)
    clip = 1.5
    for scale in (0.01, 0.3, 1.0, 10.0, 1e4):
        s = {"a": torch.randn(40, generator=gen) * scale, "b": torch.randn(3, 3, generator=gen)}
        clipped, norm = clip_state(s, clip)
        by_hand = math.sqrt(sum(float((v.double() ** 2).sum()) for v in s.values()))
        assert norm == pytest.approx(by_hand, rel=1e-12)
        assert l2_norm(clipped) <= clip * (1 + 1e-12)
        if by_hand <= clip:
            assert all(clipped[k] is s[k] for k in s)
        else:  # same direction, norm exactly C
            assert l2_norm(clipped) == pytest.approx(clip, rel=1e-12)
            ratio = clipped["a"].double() / s["a"].double()
            assert torch.allclose(ratio, torch.full_like(ratio, clip / by_hand))


def test_clip_stage_makes_deltas_of_weight_one_and_counts_the_unclipped():
    reference = state(1.0, 1.0)
    stage = ClipStage(clip=1.0)
    updates = [Update(state(4.0, 5.0)), delta_update(0.3, 0.4), delta_update(30.0, 40.0)]
    out = stage.prepare(updates, reference, np.random.default_rng(0))
    assert [u.kind for u in out] == ["delta"] * 3 and [u.weight for u in out] == [1.0] * 3
    assert torch.allclose(out[0].state["w"].double(), torch.tensor([0.6, 0.8], dtype=torch.float64))
    assert out[1].state["w"] is updates[1].state["w"]
    assert stage.unclipped == 1 and stage.norms == pytest.approx([5.0, 0.5, 50.0])


def test_without_noise_the_sum_is_divided_by_the_fixed_cohort_not_the_arrivals():
    reference = state(0.0, 0.0)
    updates = [delta_update(1.0, 0.0), delta_update(0.0, 1.0), delta_update(1.0, 1.0)]
    pipeline = ServerPipeline()
    clip = ClipStage(10.0)
    out = pipeline.run(
        reference,
        updates,
        np.random.default_rng(0),
        prepare=[clip],
        finalize=[NoisySumStage(0.0, 5.0)],
    )
    assert torch.allclose(out["w"], torch.tensor([2 / 5, 2 / 5]))
    assert int(out["n"]) == 3


def test_the_added_noise_has_standard_deviation_sigma_times_c():
    n, sigma, clip, cohort = 200_000, 1.3, 0.7, 4.0
    reference = {"w": torch.zeros(n)}
    stage = NoisySumStage(sigma * clip, cohort)
    result = stage.finalize(zero_aggregate(reference), [], np.random.default_rng(1)).result
    noise = result["w"].double() * cohort  # the noise on the sum, before the division
    std = float(noise.std())
    assert abs(std / (sigma * clip) - 1) < std_tolerance(n)
    assert abs(float(noise.mean())) < 5 * sigma * clip / math.sqrt(n)


def test_an_empty_round_is_noised_like_any_other():
    reference = {"w": torch.ones(1000)}
    pipeline = ServerPipeline()
    out = pipeline.run(
        reference,
        [],
        np.random.default_rng(2),
        prepare=[ClipStage(1.0)],
        finalize=[NoisySumStage(1.0, 10.0)],
        empty=zero_aggregate(reference),
    )
    assert not torch.equal(out["w"], reference["w"])
    assert abs(float((out["w"] - 1).std()) - 0.1) < 0.1 * std_tolerance(1000)


def test_adaptive_clipping_moves_c_to_the_target_quantile():
    norms = np.linspace(1.0, 10.0, 100)  # the 0.3 quantile is 3.7
    rng = np.random.default_rng(3)
    updates = [Update({"w": torch.tensor([float(x)])}, kind="delta") for x in norms]
    reference = {"w": torch.zeros(1)}
    clip, target = 0.5, 0.3
    for _ in range(300):
        stage = ClipStage(clip)
        stage.prepare(updates, reference, rng)
        fraction = noisy_fraction(stage.unclipped, len(updates), 1.0, 100.0, rng)
        clip = geometric_clip_update(clip, fraction, target, learning_rate=0.2)
    assert float(np.mean(norms <= clip)) == pytest.approx(target, abs=0.05)
    # one step by hand: share 0.9 above target 0.3 lowers C by exp(-0.2 · 0.6)
    assert geometric_clip_update(2.0, 0.9, 0.3, 0.2) == pytest.approx(2.0 * math.exp(-0.12))


def test_the_noisy_unclipped_share_is_centred_and_has_the_count_noise():
    rng = np.random.default_rng(4)
    draws = [noisy_fraction(7, 10, 2.0, 20.0, rng) for _ in range(20_000)]
    assert np.mean(draws) == pytest.approx(7 / 20 - 10 / 40 + 0.5, abs=5 * 0.1 / math.sqrt(20_000))
    assert abs(np.std(draws) / 0.1 - 1) < std_tolerance(20_000)


def test_update_noise_multiplier_keeps_the_total_privacy():
    sigma, count_std = 1.0, 5.0
    sigma_update = update_noise_multiplier(sigma, count_std)
    assert sigma_update**-2 + (2 * count_std) ** -2 == pytest.approx(sigma**-2)
    assert math.isinf(update_noise_multiplier(1.0, 0.4))


def test_local_dp_noise_on_the_device_has_std_sigma_c_and_counts_releases():
    n, sigma, clip = 100_000, 0.8, 2.0
    transform = LocalGaussian(clip=clip, noise_multiplier=sigma)
    memory: dict = {}
    big = Update({"w": torch.full((n,), 1.0)}, kind="delta", metrics={"train_loss": 1.0})
    out = transform.send(big, memory, np.random.default_rng(5))
    clipped = clip / math.sqrt(n)  # every entry after clipping to norm C
    noise = out.state["w"].double() - clipped
    assert out.state["w"].dtype == torch.float32
    assert abs(float(noise.std()) / (sigma * clip) - 1) < std_tolerance(n)
    assert abs(float(noise.mean())) < 5 * sigma * clip / math.sqrt(n)
    assert out.metrics[RELEASES] == 1.0 and out.metrics["train_loss"] == 1.0
    transform.send(big, memory, np.random.default_rng(6))
    assert memory["releases"] == 2


def test_aggregate_of_no_updates_is_a_zero_delta():
    agg = zero_aggregate(state(1.0, 2.0))
    assert isinstance(agg, Aggregate) and agg.kind == "delta"
    assert torch.equal(agg.result["w"], torch.zeros(2)) and int(agg.result["n"]) == 3


def test_weighted_models_enter_the_noisy_sum_as_their_deltas():
    """The cloud over edges: an edge's model (a state) with weight k_e adds k_e·(model − ref)."""
    reference = state(1.0, 1.0)
    edges = [Update(state(2.0, 1.0), weight=2.0), Update(state(1.0, 4.0), weight=3.0)]
    rng = np.random.default_rng(0)
    agg = NoisySumStage(0.0, 10.0).finalize(zero_aggregate(reference), edges, rng)
    assert torch.allclose(agg.result["w"].double(), torch.tensor([0.2, 0.9], dtype=torch.float64))

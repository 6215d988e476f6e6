"""DP-FedAvg runs report the ε that dp-accounting gives for the same events built by hand,
stop before ``max_epsilon`` would be exceeded, keep ε across a resume and refuse bad
settings with one line naming the field."""

import json
import math
from pathlib import Path

import dp_accounting as dp
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from fedge.cli import main
from fedge.core.errors import ConfigError
from fedge.experiment import load_config
from fedge.experiment.build import build
from fedge.results import RunStore
from fedge.runs import resume_experiment, run_experiment
from fedge.runtime import NodeSet

DELTA = 1e-5
SIGMA = 1.2
REPLACE_ONE = dp.NeighboringRelation.REPLACE_ONE


@pytest.fixture
def tiny_config(tiny_config):
    """The shared tiny config without plots (they are not what these tests check)."""
    text = tiny_config.read_text().replace("progress = false", "progress = false\nplots = false")
    tiny_config.write_text(text)
    return tiny_config


def run(tiny_config, *overrides):
    cfg = load_config(
        tiny_config,
        ["privacy.mechanism='central'", f"privacy.noise_multiplier={SIGMA}", *overrides],
    )
    result = run_experiment(cfg, progress=False)
    return result, [row["epsilon"] for row in result.rows]


def rdp_epsilon(event, count, relation=dp.NeighboringRelation.ADD_OR_REMOVE_ONE):
    acc = RdpAccountant(neighboring_relation=relation)
    acc.compose(event, count)
    return acc.get_epsilon(DELTA)


@pytest.mark.slow
def test_fixed_size_sampling_is_accounted_without_replacement_under_replace_one(tiny_config):
    result, eps = run(tiny_config)  # 4 of 10 devices, 3 rounds
    event = dp.SampledWithoutReplacementDpEvent(10, 4, dp.GaussianDpEvent(SIGMA / 2))
    expected = [rdp_epsilon(event, r, REPLACE_ONE) for r in (1, 2, 3)]
    assert eps == pytest.approx(expected, rel=1e-12)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["epsilon"] == pytest.approx(expected[-1], rel=1e-12)
    assert summary["delta"] == DELTA
    assert [row["noise_std"] for row in result.rows] == pytest.approx([SIGMA * 1.0 / 4] * 3)


@pytest.mark.slow
def test_poisson_sampling_is_accounted_as_poisson_under_add_remove(tiny_config):
    _, eps = run(
        tiny_config, "federation.selection='poisson'", "federation.selection_params.rate=0.3"
    )
    event = dp.PoissonSampledDpEvent(0.3, dp.GaussianDpEvent(SIGMA))
    assert eps == pytest.approx([rdp_epsilon(event, r) for r in (1, 2, 3)], rel=1e-12)


@pytest.mark.slow
def test_pld_accountant_gives_the_library_value_for_poisson(tiny_config):
    cfg = load_config(
        tiny_config,
        ["privacy.mechanism='central'", "privacy.accountant='pld'",
         "federation.selection='poisson'", "federation.selection_params.rate=0.3", "rounds=1"],
    )  # fmt: skip
    eps = run_experiment(cfg, progress=False).rows[-1]["epsilon"]
    acc = dp.pld.PLDAccountant()
    acc.compose(dp.PoissonSampledDpEvent(0.3, dp.GaussianDpEvent(1.0)), 1)
    assert eps == pytest.approx(acc.get_epsilon(DELTA), rel=1e-9)


@pytest.mark.slow
def test_adaptive_clipping_accounts_the_count_noise_too(tiny_config):
    count_std = 2.0
    result, eps = run(
        tiny_config, "privacy.adaptive_clip=true", f"privacy.clipped_count_stddev={count_std}"
    )
    sigma_update = (SIGMA**-2 - (2 * count_std) ** -2) ** -0.5
    inner = dp.ComposedDpEvent(
        [dp.GaussianDpEvent(sigma_update / 2), dp.GaussianDpEvent(count_std)]
    )
    event = dp.SampledWithoutReplacementDpEvent(10, 4, inner)
    assert eps == pytest.approx([rdp_epsilon(event, r, REPLACE_ONE) for r in (1, 2, 3)], rel=1e-12)
    # the count's noise is paid for: the total equals plain DP-FedAvg at σ
    plain = dp.SampledWithoutReplacementDpEvent(10, 4, dp.GaussianDpEvent(SIGMA / 2))
    assert eps[-1] == pytest.approx(rdp_epsilon(plain, 3, REPLACE_ONE), rel=1e-6)
    clips = [row["clip_norm"] for row in result.rows]
    assert clips[0] == 1.0 and len(set(clips)) == 3  # C moves every round


@pytest.mark.slow
def test_max_epsilon_stops_before_the_round_that_would_exceed_it(tiny_config, capsys):
    event = dp.SampledWithoutReplacementDpEvent(10, 4, dp.GaussianDpEvent(SIGMA / 2))
    eps2, eps3 = (rdp_epsilon(event, r, REPLACE_ONE) for r in (2, 3))
    limit = (eps2 + eps3) / 2
    code = main(
        ["run", str(tiny_config), "--set", "privacy.mechanism='central'", "--set",
         f"privacy.noise_multiplier={SIGMA}", "--set", f"privacy.max_epsilon={limit}", "--set",
         "rounds=5"]
    )  # fmt: skip
    assert code == 0
    assert "privacy.max_epsilon" in capsys.readouterr().err
    run_dir = next(p for p in (tiny_config.parent / "runs").iterdir() if p.is_dir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["epsilon"] == pytest.approx(eps2)
    assert "round 3 would reach" in summary["stop_reason"]
    store = RunStore(tiny_config.parent / "runs" / "fedge.sqlite")
    assert store.get_run(run_dir.name)["status"] == "finished"


class Cut(Exception):
    """Stands for a crash in the middle of a round."""


@pytest.mark.slow
def test_a_resumed_run_reports_the_same_epsilon(tiny_config, tmp_path, monkeypatch):
    overrides = ["privacy.mechanism='central'", "privacy.adaptive_clip=true",
                 "privacy.clipped_count_stddev=2.0", "rounds=4"]  # fmt: skip
    whole = run_experiment(load_config(tiny_config, overrides), tmp_path / "a", progress=False)
    original = NodeSet.deliver

    def deliver(self, message, downstream):
        if message.round == 3:
            raise Cut()
        return original(self, message, downstream)

    monkeypatch.setattr(NodeSet, "deliver", deliver)
    with pytest.raises(Cut):
        run_experiment(load_config(tiny_config, overrides), tmp_path / "b", progress=False)
    monkeypatch.setattr(NodeSet, "deliver", original)
    run_dir = next((tmp_path / "b").iterdir())
    resumed = resume_experiment(run_dir, progress=False)
    for key in ("epsilon", "clip_norm", "accuracy"):
        assert [r[key] for r in resumed.rows] == [r[key] for r in whole.rows], key


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "kappa2"), [("hierarchical", 2), ("msfl", 1)])
def test_per_edge_noise_is_accounted_per_edge_and_the_cloud_reports_the_largest(
    tiny_config, algorithm, kappa2
):
    overrides = [f"algorithm='{algorithm}'", "federation.clients_per_edge=2", "rounds=2",
                 f"federation.kappa2={kappa2}"]  # fmt: skip
    result, eps = run(tiny_config, *overrides)
    system = build(load_config(tiny_config, overrides)).system
    devices = system.ids("device")
    per_edge = []
    for edge in system.ids("edge"):
        n = sum(system.attachment(d, 0.0) == edge for d in devices)
        event = dp.SampledWithoutReplacementDpEvent(n, min(2, n), dp.GaussianDpEvent(SIGMA / 2))
        per_edge.append([rdp_epsilon(event, kappa2 * r, REPLACE_ONE) for r in (1, 2)])
    assert eps == pytest.approx([max(e[i] for e in per_edge) for i in range(2)], rel=1e-12)
    assert math.isfinite(result.summary["accuracy"])
    assert result.summary["epsilon"] == pytest.approx(eps[-1])


@pytest.mark.slow
def test_local_dp_is_accounted_per_device_without_sampling_amplification(tiny_config):
    cfg = load_config(
        tiny_config,
        ["privacy.mechanism='local'", f"privacy.noise_multiplier={SIGMA}",
         "federation.clients_per_round=10"],
    )  # fmt: skip
    eps = [row["epsilon"] for row in run_experiment(cfg, progress=False).rows]
    expected = [rdp_epsilon(dp.GaussianDpEvent(SIGMA / 2), r, REPLACE_ONE) for r in (1, 2, 3)]
    assert eps == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["privacy.noise_multiplier=-1"], "privacy.noise_multiplier: got -1"),
        (["privacy.delta=0"], "privacy.delta: got 0"),
        (["privacy.delta=1.5"], "privacy.delta: got 1.5; allowed: less than 1"),
        (["privacy.max_epsilon=0.01"], "privacy.max_epsilon: got 0.01; allowed: a value >= "),
        (["federation.selection='power_of_choice'"],
         "federation.selection: got 'power_of_choice'; allowed: random | poisson"),
        (["privacy.noise_multiplier=0", "privacy.max_epsilon=10"],
         "privacy.max_epsilon: got 10.0; allowed: unset with noise_multiplier = 0"),
        (["privacy.colour=1"], "privacy.colour: got 1; allowed: unknown key; known keys here: "),
        (["privacy.mechanism='laplace'"], "privacy.mechanism: got 'laplace'; allowed: "),
        (["privacy.accountant='pld'"], "privacy.accountant: got 'pld'; allowed: 'rdp'"),
        (["federation.aggregator='median'"],
         "federation.aggregator: got 'median'; allowed: 'mean'"),
        (["algorithm='dfl'"],
         "privacy.mechanism: got 'central'; allowed: 'none' for algorithm 'dfl'"),
        (["privacy.noise_at='edge'"], "privacy.noise_at: got 'edge'; allowed: 'cloud'"),
        (["algorithm='hierarchical'", "privacy.noise_at='cloud'", "federation.kappa2=2"],
         "federation.kappa2: got 2; allowed: 1 with central DP noise at the cloud"),
        (["algorithm='msfl'", "system.mobility='highway'"],
         "system.mobility: got 'highway'; allowed: 'static'"),
        (["privacy.adaptive_clip=true"],
         "privacy.clipped_count_stddev: got 0.2; allowed: a value > "),
    ],
)  # fmt: skip
def test_bad_privacy_settings_exit_2_naming_the_field(capsys, tiny_config, overrides, expected):
    argv = ["run", str(tiny_config), "--set", "privacy.mechanism='central'"]
    for item in overrides:
        argv += ["--set", item]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not any(Path(tiny_config.parent / "runs").glob("*/metrics.csv"))


def test_poisson_selection_includes_each_device_independently_with_its_rate():
    from fedge.algorithms.selection import make_selector

    selector = make_selector("poisson", {"rate": 0.2}, 10, None)
    devices = [f"d{i}" for i in range(2000)]
    rng = np.random.default_rng(0)
    counts = [len(selector.select(devices, 10, rng, None)) for _ in range(50)]
    sd = math.sqrt(2000 * 0.2 * 0.8 / 50)  # of the mean of 50 binomial draws
    assert abs(np.mean(counts) - 400) < 5 * sd
    assert max(counts) > 10  # clients_per_round does not cap a Poisson cohort
    with pytest.raises(ConfigError, match=r"federation\.selection_params\.rate"):
        make_selector("poisson", {"rate": 0.0}, 10, None)


@pytest.mark.slow
def test_noise_at_the_cloud_of_hierarchical_fl_is_accounted_on_the_densest_edge(tiny_config):
    overrides = ["algorithm='hierarchical'", "privacy.noise_at='cloud'",
                 "federation.clients_per_edge=2", "rounds=2"]  # fmt: skip
    result, eps = run(tiny_config, *overrides)
    system = build(load_config(tiny_config, ["privacy.mechanism='central'", *overrides])).system
    devices = system.ids("device")
    sizes = [sum(system.attachment(d, 0.0) == e for d in devices) for e in system.ids("edge")]
    strata = [(n, min(2, n)) for n in sizes if n]
    n, k = max(strata, key=lambda nk: nk[1] / nk[0])
    event = dp.SampledWithoutReplacementDpEvent(n, k, dp.GaussianDpEvent(SIGMA / 2))
    assert eps == pytest.approx([rdp_epsilon(event, r, REPLACE_ONE) for r in (1, 2)], rel=1e-12)
    cohort = sum(k for _, k in strata)
    assert [row["noise_std"] for row in result.rows] == pytest.approx([SIGMA / cohort] * 2)


def test_local_noise_comes_before_compression_on_the_device():
    from fedge.algorithms import ALGORITHMS
    from fedge.experiment.build import client_pipeline
    from fedge.transforms import LocalGaussian
    from fedge.transforms.compression import TopK

    cfg = load_config(
        Path(__file__).parents[2] / "examples" / "privacy" / "dp_local.toml",
        ["compression=[{link='device-cloud', method='topk', ratio=0.1}]"],
    )
    links = client_pipeline(cfg, ALGORITHMS.get("fedavg"))
    assert [type(t) for t in links["device-cloud"]] == [LocalGaussian, TopK]


@pytest.mark.slow
def test_central_dp_composes_with_compressed_uplinks(tiny_config):
    """Updates are clipped and noised after decompression: ε is unchanged, bytes shrink."""
    topk = "compression=[{link='device-cloud', method='topk', ratio=0.05}]"
    result, eps = run(tiny_config, topk, "rounds=2")
    event = dp.SampledWithoutReplacementDpEvent(10, 4, dp.GaussianDpEvent(SIGMA / 2))
    assert eps == pytest.approx([rdp_epsilon(event, r, REPLACE_ONE) for r in (1, 2)], rel=1e-12)
    assert result.summary["compression_ratio_up"] > 5


@pytest.mark.slow
def test_a_dp_run_samples_the_same_devices_as_its_plain_twin(tiny_config):
    """The noise has its own stream: same cohorts, messages and simulated time; new weights."""
    plain = run_experiment(load_config(tiny_config), progress=False)
    private, _ = run(tiny_config)
    for key in ("selected", "participants", "flops", "bytes_down"):
        assert [r[key] for r in private.rows] == [r[key] for r in plain.rows], key
    # uplink bytes differ only by how the devices' reported train loss encodes (a few bytes)
    for key in ("sim_time_s", "bytes_up"):
        assert [r[key] for r in private.rows] == pytest.approx([r[key] for r in plain.rows], 1e-4)
    assert [r["loss"] for r in private.rows] != [r["loss"] for r in plain.rows]

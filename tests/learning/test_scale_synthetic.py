"""Synthetic(alpha, beta) of FedProx / LEAF: clients made on demand from (seed, client)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.learning.synthetic import SyntheticFederation, load_leaf_synthetic


def test_a_client_is_a_function_of_seed_and_index_only() -> None:
    small, large = SyntheticFederation(10, seed=5), SyntheticFederation(100_000, seed=5)
    for k in (0, 3, 9):
        x1, y1 = small.client_data(k)
        x2, y2 = large.client_data(k)
        x3, _ = small.client_data(k)
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(x1, x3)
        assert len(small.client(k)) == len(y1) == int(large.sizes[k])
    other = SyntheticFederation(10, seed=6)
    assert not torch.equal(other.client_data(3)[0][:5], small.client_data(3)[0][:5])


def test_features_follow_the_published_covariance() -> None:
    """x ~ N(v_k, Σ) with Σ = diag(j^-1.2): a large client's sample covariance is that."""
    fed = SyntheticFederation(2000, alpha=0.5, beta=0.5, seed=1)
    k = int(np.argmax(fed.sizes))
    x = fed.client_data(k)[0].double().numpy()
    assert len(x) > 5000
    cov = np.cov(x, rowvar=False)
    expected = np.arange(1, 61, dtype=float) ** -1.2
    assert np.allclose(np.diag(cov), expected, rtol=0.12)
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert np.max(np.abs(corr - np.eye(60))) < 0.08


def test_client_means_spread_as_beta_says() -> None:
    """The mean feature of client k is about mean(v_k) = B_k + N(0, 1/d), B_k ~ N(0, β²):
    across clients its variance is β² + 1/60 (plus the sampling noise of each mean)."""
    beta = 2.0
    fed = SyntheticFederation(600, alpha=0.0, beta=beta, seed=2, max_samples=400)
    means = [float(fed.client_data(k)[0].double().mean()) for k in range(600)]
    assert np.var(means) == pytest.approx(beta**2 + 1 / 60, rel=0.15)


def test_sizes_follow_the_power_law() -> None:
    """n_k = floor(LogNormal(4, 2)) + 50: log(n_k - 50 + 1/2) has median 4 and IQR 2·1.349."""
    sizes = SyntheticFederation(200_000, seed=3).sizes
    logs = np.log(sizes - 50 + 0.5)
    assert sizes.min() >= 50
    assert np.median(logs) == pytest.approx(4.0, abs=0.03)
    q75, q25 = np.percentile(logs, [75, 25])
    assert q75 - q25 == pytest.approx(2 * 1.349, rel=0.03)
    capped = SyntheticFederation(1000, seed=3, max_samples=300).sizes
    assert capped.max() == 300 and np.array_equal(capped, np.minimum(sizes[:1000], 300))


def test_labels_are_a_linear_argmax_of_the_features() -> None:
    """y = argmax(x W_k + b_k): a client's classes are linearly separable, so an (almost)
    unregularised multinomial logistic regression fits them exactly."""
    from sklearn.linear_model import LogisticRegression

    fed = SyntheticFederation(50, seed=4, max_samples=600)
    k = int(np.argmax(fed.sizes))
    x, y = fed.client_data(k)
    if len(np.unique(y.numpy())) < 2:
        pytest.skip("a one-class client")
    clf = LogisticRegression(C=1e6, max_iter=5000).fit(x.numpy(), y.numpy())
    assert clf.score(x.numpy(), y.numpy()) >= 0.99


def test_the_pooled_loader_concatenates_the_clients() -> None:
    train, test = load_leaf_synthetic(n_clients=4, seed=7, max_samples=80, test_clients=2)
    fed = SyntheticFederation(4, seed=7, max_samples=80, test_clients=2)
    assert torch.equal(train.x, torch.cat([fed.client_data(k)[0] for k in range(4)]))
    assert len(test) == 2 * 20 and train.input_shape == (60,)


SYN = """
name = "syn"
seed = 0
rounds = 1
algorithm = "fedavg"
[data]
dataset = "leaf_synthetic"
[data.synthetic]
max_samples = 200
test_clients = 20
[model]
name = "logistic"
[training]
lr = 0.01
batch_size = 10
[federation]
clients_per_round = 10
[system]
edges = 10
out_of_coverage = "nearest"
"""


def _config(tmp_path: Path, devices: int) -> Path:
    path = tmp_path / "syn.toml"
    path.write_text(SYN + f"devices = {devices}\n")
    return path


def test_devices_train_their_own_client(tmp_path: Path) -> None:
    exp = build(load_config(_config(tmp_path, 50)))
    apps = exp.nodes.apps
    assert apps.made == 0  # no device app exists before it is reached
    trainer = apps["dev7"].handlers["train"].__self__
    assert torch.equal(trainer.data.x, exp.federation.client_data(7)[0])
    assert apps.made == 1


@pytest.mark.slow
def test_a_million_clients_build_and_run_a_round(tmp_path: Path) -> None:
    """A population of 1,000,000 with a cohort of 10: the round reaches only its cohort."""
    import resource
    import time

    start = time.perf_counter()
    exp = build(load_config(_config(tmp_path, 1_000_000)))
    exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 1)
    elapsed = time.perf_counter() - start
    assert exp.nodes.apps.made == 10
    assert exp.transport.stats()["sim_time_s"] > 0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert elapsed < 120 and peak_mib < 3000


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ('data.partition="iid"', "data.partition"),
        ("data.synthetic.alpha=-1", "data.synthetic.alpha"),
        ('algorithm="msfl"', "data.dataset"),
    ],
)
def test_bad_synthetic_configs_exit_2_naming_the_field(
    tmp_path: Path, override: str, field: str
) -> None:
    _refused(_config(tmp_path, 20), override, field, tmp_path)


@pytest.mark.slow
def test_a_pooled_dataset_with_more_devices_than_samples_is_refused(tmp_path: Path) -> None:
    """digits has 1437 training samples: 2000 devices cannot each hold one."""
    path = tmp_path / "pooled.toml"
    path.write_text(
        'rounds = 1\n[data]\ndataset = "digits"\n[model]\nname = "mlp"\n'
        '[system]\nedges = 2\ndevices = 2000\nout_of_coverage = "nearest"\n'
    )
    _refused(path, "seed=0", "system.devices", tmp_path)


def _refused(path: Path, override: str, field: str, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "fedge.cli", "run", str(path), "--set", override]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd)
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr and "Traceback" not in proc.stderr

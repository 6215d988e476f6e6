"""Bad input is rejected before any work, with one message naming field, value and allowed."""

import pytest

from fedge.cli import main
from fedge.core.errors import ConfigError
from fedge.experiment.config import apply_overrides, load_config


def run_cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("colour=3", "colour: got 3; allowed: unknown key; known keys here: algorithm,"),
        ("rounds='many'", "rounds: got 'many'; allowed: a valid integer"),
        (
            "system.wan.bandwidth_mbps=-5",
            "system.wan.bandwidth_mbps: got -5; allowed: greater than 0",
        ),
        (
            "algorithm='fedsgd'",
            "algorithm: got 'fedsgd'; allowed: one of clustered_hfl, dfl, ditto, dpcg, dpmn,",
        ),
        (
            "data.dataset='cifar'",
            "data.dataset: got 'cifar'; allowed: one of digits, fashion_mnist",
        ),
        ("model.name='vgg'", "model.name: got 'vgg'; allowed: one of"),
        ("federation.aggregator='avg'", "federation.aggregator: got 'avg'; allowed: one of"),
        (
            "system.topology='moon'",
            "system.topology: got 'moon'; allowed: 'highway', 'random_geometric'",
        ),
        ("system.device.gflops_max=1", "system.device.gflops_max: got 1.0; allowed: a number >="),
    ],
)
def test_bad_input_exits_2_with_one_clear_message(capsys, tiny_config, override, expected):
    code, out = run_cli(capsys, "run", str(tiny_config), "--set", override)
    assert code == 2
    assert out.err.startswith("fedge: error: ")
    assert expected in out.err
    assert len(out.err.strip().splitlines()) == 1
    assert not (tiny_config.parent / "runs").exists(), "nothing may run before validation"


def test_missing_dataset_says_how_to_install(capsys, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDGE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("fedge.learning.fashion.SYSTEM_DIR", tmp_path / "none", raising=False)
    code, out = run_cli(
        capsys,
        "run",
        str(tiny_config),
        "--set",
        "data.dataset='fashion_mnist'",
        "--set",
        f"data.root='{tmp_path / 'nowhere'}'",
    )
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in out.err


def test_set_overrides_parse_toml_values():
    raw = apply_overrides(
        {"rounds": 5, "data": {"alpha": 1.0}},
        ["rounds=2", "data.alpha=0.1", "name=plain words", "federation.x=[1,2]"],
    )
    assert raw == {
        "rounds": 2,
        "data": {"alpha": 0.1},
        "name": "plain words",
        "federation": {"x": [1, 2]},
    }


def test_set_without_equals_is_rejected(tiny_config):
    with pytest.raises(ConfigError, match="--set"):
        load_config(tiny_config, ["rounds"])


def test_unreadable_config_files_are_reported(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3")
    assert run_cli(capsys, "run", str(bad))[0] == 2
    code, out = run_cli(capsys, "run", str(tmp_path / "absent.toml"))
    assert code == 2 and "does not exist" in out.err

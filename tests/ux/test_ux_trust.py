"""Nothing silent, nothing lost: bad input stops with one line before any work, data comes
from where the user said, and a run that never started leaves nothing behind."""

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedge.cli import main
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.learning.partition import PARTITIONERS
from fedge.runs.run import run_experiment


def run_cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


def one_line_error(code, out, *needles):
    assert code == 2, out.err
    assert out.err.startswith("fedge: error: "), out.err
    assert len(out.err.strip().splitlines()) == 1, out.err
    for needle in needles:
        assert needle in out.err, out.err


def store_rows(tiny_config: Path) -> list[tuple[str, str]]:
    path = tiny_config.parent / "runs" / "fedge.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT id, status FROM runs"))


def run_dirs(tiny_config: Path) -> list[Path]:
    runs = tiny_config.parent / "runs"
    return [p for p in runs.iterdir() if p.is_dir()] if runs.exists() else []


# --- files the user names -------------------------------------------------------------


def test_config_that_is_not_utf8_or_a_directory_is_one_line(capsys, tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    one_line_error(*run_cli(capsys, "run", str(latin)), "latin.toml", "not UTF-8")
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    one_line_error(*run_cli(capsys, "run", str(folder)), "folder.toml", "is a directory")


def test_out_that_is_a_file_or_unwritable_is_refused_before_any_work(capsys, tiny_config):
    blocker = tiny_config.parent / "blocker"
    blocker.write_text("not a folder")
    code, out = run_cli(capsys, "run", str(tiny_config), "--out", str(blocker / "sub"))
    one_line_error(code, out, "--out", "blocker is a file")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tiny_config.parent / "locked"
        locked.mkdir(mode=0o500)
        one_line_error(*run_cli(capsys, "run", str(tiny_config), "--out", str(locked)), "--out")
    assert store_rows(tiny_config) == [] and run_dirs(tiny_config) == []


def test_a_model_path_that_is_no_module_factory_is_one_line(capsys, tiny_config):
    for path, says in [
        ("json:JSONDecoder", "JSONDecoder is not an nn.Module"),
        ("math:pi", "it is a float"),
        ("json:nothing_here", "an attribute that exists in json"),
        ("no_such_module_x:f", "an importable module"),
    ]:
        code, out = run_cli(capsys, "run", str(tiny_config), "--set", f"model.name='{path}'")
        one_line_error(code, out, "model.name", says)
    assert store_rows(tiny_config) == [] and run_dirs(tiny_config) == []


# --- data provenance -------------------------------------------------------------------


def test_explicit_data_root_without_the_dataset_is_an_error_not_a_fallback(capsys, tiny_config):
    empty = tiny_config.parent / "empty"
    empty.mkdir()
    (empty / "train-images-idx3-ubyte.gz").write_bytes(b"")
    code, out = run_cli(
        capsys,
        "run",
        str(tiny_config),
        "--set",
        "data.dataset='fashion_mnist'",
        "--set",
        f"data.root='{empty}'",
    )
    # the message names the folder and exactly the three files it lacks
    one_line_error(code, out, "data.root", str(empty), "train-labels-idx1-ubyte(.gz)")
    assert "train-images-idx3-ubyte(.gz)" not in out.err
    assert store_rows(tiny_config) == []


def test_fedge_data_without_the_dataset_is_an_error_not_a_fallback(
    capsys, tiny_config, monkeypatch
):
    monkeypatch.setenv("FEDGE_DATA", str(tiny_config.parent / "nowhere"))
    code, out = run_cli(capsys, "run", str(tiny_config), "--set", "data.dataset='fashion_mnist'")
    one_line_error(code, out, "FEDGE_DATA", "nowhere", "is not a directory")


def test_a_run_records_the_data_folder_and_a_hash_of_each_file(tiny_config):
    import sklearn.datasets

    result = run_experiment(load_config(tiny_config, ["rounds=1"]))
    data = json.loads((result.run_dir / "versions.json").read_text())["data"]
    path = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    assert data["dir"] == str(path.parent)
    assert data["files"] == {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    assert "digits.csv.gz" in (result.run_dir / "report.html").read_text()


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST not installed"
)
def test_fashion_source_hashes_the_files_it_reads(monkeypatch):
    from fedge.learning import fashion

    monkeypatch.delenv("FEDGE_DATA", raising=False)
    root = Path("/usr/share/datasets/fashion-mnist")
    src = fashion.source(root)
    assert src["dir"] == str(root)
    assert len(src["files"]) == 4
    name, digest = next(iter(src["files"].items()))
    assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest


# --- no empty or clamped federation ----------------------------------------------------


def test_more_clients_per_round_than_devices_is_refused(capsys, tiny_config):
    code, out = run_cli(capsys, "run", str(tiny_config), "--set", "federation.clients_per_round=11")
    one_line_error(code, out, "federation.clients_per_round", "11", "system.devices = 10")
    assert store_rows(tiny_config) == []


def test_more_devices_than_samples_is_refused(capsys, tiny_config):
    code, out = run_cli(
        capsys,
        "run",
        str(tiny_config),
        "--set",
        "system.devices=1500",
        "--set",
        "federation.clients_per_round=4",
    )
    one_line_error(code, out, "system.devices", "1500", "1437 training samples")


def test_min_size_the_data_cannot_give_names_both_fields(capsys, tiny_config):
    code, out = run_cli(capsys, "run", str(tiny_config), "--set", "data.min_size=200")
    # 10 devices x 200 > 1437 training samples of digits
    one_line_error(code, out, "data.min_size", "200", "at most 143", "system.devices = 10")


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards", "quantity_skew"])
def test_no_partitioner_leaves_a_device_without_samples(tiny_config, name):
    overrides = [f"data.partition='{name}'", "system.devices=40", "data.min_size=1"]
    exp = build(load_config(tiny_config, [*overrides, "data.shards_per_client=1"]))
    sizes = [len(p) for p in exp.parts]
    assert len(sizes) == 40 and min(sizes) >= 1
    assert len(np.unique(np.concatenate(exp.parts))) == sum(sizes)  # each sample used once


def test_a_partition_that_leaves_a_device_empty_is_refused(capsys, tiny_config, monkeypatch):
    def lopsided(labels, n_clients, rng):
        idx = np.arange(len(labels))
        return [idx[: len(idx) // 2], idx[len(idx) // 2 :]] + [idx[:0]] * (n_clients - 2)

    monkeypatch.setitem(PARTITIONERS._items, "lopsided", lopsided)
    code, out = run_cli(capsys, "run", str(tiny_config), "--set", "data.partition='lopsided'")
    one_line_error(code, out, "data.partition", "8 of 10 devices got none")


# --- settings the algorithm does not use -----------------------------------------------


def test_a_setting_the_algorithm_does_not_use_warns_once_and_is_stored(capsys, tiny_config):
    code, out = run_cli(
        capsys, "run", str(tiny_config), "--set", "rounds=1", "--set", "federation.interserver='wa'"
    )
    assert code == 0
    warned = [line for line in out.err.splitlines() if line.startswith("warning:")]
    assert warned == [
        "warning: federation.interserver is set but algorithm 'fedavg' does not use it"
    ]
    (run_dir,) = run_dirs(tiny_config)
    assert json.loads((run_dir / "warnings.json").read_text()) == [warned[0][len("warning: ") :]]
    assert "federation.interserver is set" in (run_dir / "report.html").read_text()


def test_a_section_of_another_algorithm_warns(tiny_config):
    exp = build(load_config(tiny_config, ["decentralized.lambda=0.5"]))
    assert any("decentralized.lambda" in w and "[decentralized]" in w for w in exp.warnings)
    assert build(load_config(tiny_config)).warnings == ()


def test_a_bad_parameter_is_refused_even_when_its_algorithm_does_not_run(capsys, tiny_config):
    code, out = run_cli(capsys, "run", str(tiny_config), "--set", "federation.interserver='nope'")
    one_line_error(code, out, "federation.interserver", "nope")
    code, out = run_cli(
        capsys, "run", str(tiny_config), "--set", "federation.interserver_params={bogus=1}"
    )
    one_line_error(code, out, "federation.interserver_params", "bogus")
    assert store_rows(tiny_config) == []


# --- a run that fails before round 1 ---------------------------------------------------


def test_a_run_that_fails_before_round_one_leaves_no_row_and_no_directory(tiny_config, monkeypatch):
    from fedge.algorithms.fedavg import FedAvg

    def broken(self, *args, **kwargs):
        raise RuntimeError("the coordinator broke before its first round")

    monkeypatch.setattr(FedAvg, "run", broken)
    with pytest.raises(RuntimeError, match="before its first round"):
        run_experiment(load_config(tiny_config))
    assert store_rows(tiny_config) == []
    assert run_dirs(tiny_config) == []


def test_a_run_that_fails_after_round_one_is_kept_as_failed(tiny_config, monkeypatch):
    from fedge.runs.observer import RoundObserver

    original = RoundObserver.__call__

    def fail_in_round_two(self, record):
        if record.round == 2:
            raise RuntimeError("round 2 broke")
        return original(self, record)

    monkeypatch.setattr(RoundObserver, "__call__", fail_in_round_two)
    with pytest.raises(RuntimeError, match="round 2 broke"):
        run_experiment(load_config(tiny_config))
    assert [status for _, status in store_rows(tiny_config)] == ["failed"]
    assert len(run_dirs(tiny_config)) == 1


# --- the command line ------------------------------------------------------------------


def test_help_lists_every_command_and_version(capsys):
    import fedge

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"fedge {fedge.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    commands = ["run", "compare", "list", "report", "schedule", "partition-model", "certs"]
    for command in [*commands, "serve", "deploy-local"]:
        assert f"\n    {command} " in out or f"\n    {command}\n" in out, command


def test_run_help_says_set_takes_toml_and_where_the_store_is(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "the value is TOML" in out and "output.store" in out and "runs/fedge.sqlite" in out


def test_list_names_the_config_key_of_each_category_and_import_paths(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for header in (
        "algorithms (algorithm):",
        "partitioners (data.partition):",
        "models (model.name):",
        "selectors (federation.selection):",
        "schedulers (study_params.scheduler",
        "recipes (examples/",
    ):
        assert header in out, header
    assert "'package.module:attr'" in out and "atsa_paper" in out and "msfl/" in out
    # the full first paragraph of a description, not its first line only
    assert "each ant y adds Q / Z_y" in " ".join(out.split())


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--set", "rounds"], "--set: got 'rounds'; allowed: dotted.key=value"),
        (["--set", "rounds.x=1"], "rounds is a value, not a section"),
        (["--set", "data.validation_size=800"], "data.validation_size: got 800"),
    ],
)
def test_bad_set_overrides_are_one_line(capsys, tiny_config, argv, says):
    one_line_error(*run_cli(capsys, "run", str(tiny_config), *argv), says)
    assert store_rows(tiny_config) == []


def test_invalid_toml_and_no_config_are_one_line(capsys, tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("rounds = = 3\n")
    one_line_error(*run_cli(capsys, "run", str(broken)), "broken.toml is not valid TOML", "line 1")
    one_line_error(*run_cli(capsys, "run"), "run: got no config")


def test_the_run_keeps_the_config_as_written_and_it_runs_again(tiny_config):
    config = load_config(tiny_config, ["rounds=1", "decentralized.lambda=0.3"])
    result = run_experiment(config)
    written = (result.run_dir / "config.toml").read_text()
    assert "lambda = 0.3" in written and "kappa1" not in written  # only what was given
    assert load_config(result.run_dir / "config.toml") == config
    page = (result.run_dir / "report.html").read_text()
    assert "As written" in page and "lambda = 0.3" in page

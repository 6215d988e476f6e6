"""TensorBoard and MLflow get the same per-round numbers as the run store."""

import math

import pytest

from fedge.cli import main
from fedge.experiment.config import load_config
from fedge.results import RunStore
from fedge.runs.run import run_experiment


def store_rounds(config, run_id):
    with RunStore(config.output.store) as store:
        return store.rounds(run_id)


def test_tensorboard_events_hold_every_round_of_the_store(tiny_config):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = load_config(tiny_config, ["rounds=2", "output.tensorboard=true"])
    result = run_experiment(config)
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    rows = store_rounds(config, result.run_id)
    accuracy = [(e.step, e.value) for e in events.Scalars("accuracy")]
    assert accuracy == [(r["round"], pytest.approx(r["accuracy"], rel=1e-6)) for r in rows]
    uplink = [e.value for e in events.Scalars("bytes/up_device_edge")]
    assert uplink == [r["bytes_up_device_edge"] for r in rows]
    assert "config/text_summary" in events.Tags()["tensors"]


@pytest.mark.slow
def test_mlflow_run_holds_params_metrics_and_files(tiny_config, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    config = load_config(tiny_config, ["rounds=2", f"output.mlflow_uri='{store}'"])
    result = run_experiment(config)
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["fedge.run_id"] == result.run_id
    assert run.data.params["seed"] == "3" and run.data.params["data.dataset"] == "digits"
    rows = store_rounds(config, result.run_id)
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert [(m.step, m.value) for m in history] == [(r["round"], r["accuracy"]) for r in rows]
    energy = client.get_metric_history(run.info.run_id, "energy_j")
    assert all(math.isclose(m.value, r["energy_j"]) for m, r in zip(energy, rows, strict=True))
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "summary.json", "metrics.csv", "report.html"} <= files


@pytest.mark.parametrize(
    ("setting", "package", "extra"),
    [
        ("output.tensorboard=true", "tensorboard", "tensorboard"),
        ("output.mlflow_uri='m'", "mlflow", "mlflow"),
    ],
)
def test_a_missing_tracker_package_is_one_line_with_the_install_hint(
    capsys, tiny_config, monkeypatch, setting, package, extra
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a)
    )
    assert main(["run", str(tiny_config), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert f"pip install 'fedge[{extra}]'" in err and len(err.splitlines()) == 1
    assert not (tiny_config.parent / "runs").exists()


def test_the_progress_bar_shows_accuracy_simulated_time_and_eta(tiny_config, capsys):
    result = run_experiment(load_config(tiny_config, ["rounds=2"]), progress=True)
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    accuracy = result.rows[-1]["accuracy"]
    assert "2/2" in last and f"acc {accuracy:.4f} (r2)" in last
    assert f"sim {result.rows[-1]['sim_time_s']:.2f} s" in last
    assert "<00:00" in last  # tqdm's elapsed<remaining: the ETA


@pytest.mark.slow
def test_compare_shows_one_bar_over_variants_and_seeds(tiny_config, capsys):
    from fedge.studies.compare import run_comparison

    run_comparison(
        tiny_config, ["data.alpha=0.5,5"], seeds=2, overrides=["rounds=1"], progress=True
    )
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "2 variants x 2 seeds" in err and "4/4" in err


def test_a_study_feeds_the_trackers_too(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = tmp_path / "study.toml"
    runs = tmp_path / "runs"
    path.write_text(
        'name = "s"\nstudy = "scheduling"\n[study_params]\ntasks = 20\nwindow = 10\n'
        'scheduler = "fcfs"\n[system]\nedges = 2\ndevices = 4\n'
        f'[output]\nprogress = false\ntensorboard = true\ndir = "{runs.as_posix()}"\n'
        f'store = "{(runs / "s.sqlite").as_posix()}"\n'
    )
    config = load_config(path)
    result = run_experiment(config)
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    rows = store_rounds(config, result.run_id)
    assert len(rows) == 2
    makespan = [(e.step, e.value) for e in events.Scalars("makespan_s")]
    assert makespan == [(r["round"], pytest.approx(r["makespan_s"], rel=1e-6)) for r in rows]

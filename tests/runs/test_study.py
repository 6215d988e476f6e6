"""The study seam: a study registered here runs like a training run (store, files, report,
CLI, compare), and bad study input fails before anything runs."""

import json
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import Field

from fedge.cli import main
from fedge.core.errors import FedgeError
from fedge.core.settings import Section
from fedge.experiment.config import load_config
from fedge.results import RunStore, read_rows_csv
from fedge.runs import run_experiment
from fedge.runs.study import STUDIES, StudySpec, register_study


class ToySettings(Section):
    section: ClassVar[str] = "study_params"

    steps: int = Field(3, ge=1)
    dt_s: float = Field(2.0, gt=0)
    fail_at: int = Field(0, ge=0, description="raise at this step (0: never)")


def toy_run(ctx):
    """Step k at k * dt_s; the work the edges can do in dt_s, read from the system model."""
    gflops = sum(e.compute.flops_per_s for e in ctx.system.topology.edges) / 1e9
    for k in range(1, ctx.settings.steps + 1):
        if k == ctx.settings.fail_at:
            raise FedgeError(f"toy failure at step {k}")
        ctx.clock.advance_to(k * ctx.settings.dt_s)
        yield {
            "edges": len(ctx.system.ids("edge")),
            "work_gflop": ctx.settings.dt_s * gflops,
            "draw": float(ctx.rng.random()),
        }


if "test_toy" not in STUDIES:
    register_study(
        StudySpec("test_toy", "a test-only study", ToySettings, toy_run, summed=("work_gflop",))
    )

TOY = """
name = "toy"
seed = 5
study = "test_toy"

[study_params]
steps = 3
dt_s = 2.0

[system]
edges = 3
devices = 6
"""
EDGE_GFLOPS = 1000.0  # the highway generator's edge profile: 1e12 FLOP/s


@pytest.fixture
def toy_config(tmp_path: Path) -> Path:
    path = tmp_path / "toy.toml"
    runs = tmp_path / "runs"
    out = f'[output]\nprogress = false\ndir = "{runs.as_posix()}"\n'
    path.write_text(TOY + out + f'store = "{(runs / "fedge.sqlite").as_posix()}"\n')
    return path


def run_cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


def test_a_study_is_stored_and_reported_like_a_training_run(toy_config):
    cfg = load_config(toy_config)
    result = run_experiment(cfg)
    d = result.run_dir
    for name in ("config.json", "versions.json", "metrics.csv", "summary.json", "report.html"):
        assert (d / name).is_file(), name
    assert not (d / "partition.json").exists() and not (d / "checkpoint.pkl").exists()
    assert (d / "plots" / "work_gflop_vs_step.png").is_file()
    assert json.loads((d / "config.json").read_text())["study"] == "test_toy"
    with RunStore(cfg.output.store) as store:
        stored = store.rounds(result.run_id)
        record = store.get_run(result.run_id)
    assert [r["round"] for r in stored] == [r["step"] for r in stored] == [1, 2, 3]
    assert [r["sim_time_s"] for r in stored] == [2.0, 4.0, 6.0]
    assert record["status"] == "finished" and record["run_dir"] == str(d)
    summary = json.loads((d / "summary.json").read_text())
    assert record["summary"] == summary == result.summary
    assert summary["steps"] == 3 and summary["sim_time_s"] == 6.0 and summary["edges"] == 3
    assert summary["draw"] == stored[-1]["draw"]
    assert summary["work_gflop"] == pytest.approx(3 * EDGE_GFLOPS * 2.0)  # last step's value
    assert summary["total_work_gflop"] == pytest.approx(3 * 3 * EDGE_GFLOPS * 2.0)
    assert [r["step"] for r in read_rows_csv(d / "metrics.csv")] == [1, 2, 3]


def test_the_study_rng_is_seeded_by_the_run_seed(toy_config):
    def draws(*overrides):
        return [r["draw"] for r in run_experiment(load_config(toy_config, overrides)).rows]

    assert draws() == draws()
    assert draws("seed=6") != draws()


def test_a_failing_study_marks_the_run_failed(toy_config):
    cfg = load_config(toy_config, ["study_params.fail_at=2"])
    with pytest.raises(FedgeError, match="toy failure"):
        run_experiment(cfg)
    with RunStore(cfg.output.store) as store:
        (record,) = store.list_runs()
        assert record["status"] == "failed"
        assert [r["step"] for r in store.rounds(record["id"])] == [1]


def test_fedge_run_and_list_reach_studies(capsys, toy_config):
    code, out = run_cli(capsys, "run", str(toy_config))
    assert code == 0 and "report.html" in out.out
    with RunStore(toy_config.parent / "runs" / "fedge.sqlite") as store:
        (record,) = store.list_runs()
    assert record["status"] == "finished" and record["summary"]["steps"] == 3
    code, out = run_cli(capsys, "list", "studies")
    assert code == 0
    assert "scheduling" in out.out and "test_toy" in out.out


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("study='nope'", "study: got 'nope'; allowed: one of "),
        ("study_params.stpes=2", "study_params.stpes: got 2; allowed: unknown key"),
        ("study_params.steps=0", "study_params.steps: got 0; allowed: greater than or equal"),
        ("study_params.dt_s='soon'", "study_params.dt_s: got 'soon'"),
    ],
)
def test_bad_study_input_exits_2_before_anything_runs(capsys, toy_config, override, expected):
    code, out = run_cli(capsys, "run", str(toy_config), "--set", override)
    assert code == 2
    assert out.err.startswith("fedge: error: ") and expected in out.err
    assert len(out.err.strip().splitlines()) == 1
    assert not (toy_config.parent / "runs").exists(), "nothing may run before validation"


def test_compare_over_a_study_param_gives_one_variant_per_value(capsys, toy_config, tmp_path):
    out_dir = tmp_path / "cmp"
    code, _ = run_cli(
        capsys, "compare", str(toy_config), "--vary", "study_params.steps=2,4",
        "--no-progress", "--out", str(out_dir),
    )  # fmt: skip
    assert code == 0
    (directory,) = out_dir.iterdir()
    entries = json.loads((directory / "comparison.json").read_text())
    assert [e["variant"] for e in entries] == [{"study_params.steps": 2}, {"study_params.steps": 4}]
    assert [e["metrics"]["sim_time_s"]["mean"] for e in entries] == [4.0, 8.0]
    with RunStore(toy_config.parent / "runs" / "fedge.sqlite") as store:
        steps = [store.get_run(e["runs"][0])["summary"]["steps"] for e in entries]
    assert steps == [2, 4]


def test_a_study_run_is_not_resumed(capsys, tmp_path):
    """--resume on a study's run directory says why, with exit 2."""
    from fedge.cli import main

    config = Path(__file__).parents[2] / "examples" / "atsa" / "study.toml"
    out = tmp_path / "out"
    assert main(["run", str(config), "--set", "study_params.tasks=20", "--set",
                 "study_params.window=10", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    run_dir = next(p for p in out.iterdir() if p.is_dir())
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert "is not resumed (a study writes no checkpoints" in capsys.readouterr().err

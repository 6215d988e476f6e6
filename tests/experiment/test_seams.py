"""The seams from a config: server pipelines with the reference model, compressed links,
user components by import path, and settings that a run cannot use."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from fedge.cli import main
from fedge.core.update import flatten
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.runs.run import run_experiment

TOPK = "compression=[{link='device-cloud', method='topk', ratio=0.05}]"


def run_cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


def test_clipped_mean_from_a_config_moves_the_model_at_most_max_norm(tiny_config):
    """Each update's change is clipped to max_norm, so their weighted mean moves the global
    model by at most max_norm a round (and the bound is active: plain FedAvg moves more)."""
    sets = ["rounds=1", "federation.aggregator='clipped_mean'"]
    clipped = build(
        load_config(tiny_config, [*sets, "federation.aggregator_params={max_norm=0.05}"])
    )
    plain = build(load_config(tiny_config, ["rounds=1"]))
    moves = []
    for exp in (clipped, plain):
        hist = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 1)
        step = flatten(hist.final_state) - flatten(exp.initial_state)
        moves.append(float(torch.linalg.vector_norm(step)))
    assert moves[0] <= 0.05 + 1e-6
    assert moves[1] > 0.2


def test_compressed_uplink_reports_bytes_before_and_after(tiny_config, tmp_path):
    plain = run_experiment(load_config(tiny_config, ["rounds=2"]), out_dir=tmp_path / "a")
    topk = run_experiment(load_config(tiny_config, ["rounds=2", TOPK]), out_dir=tmp_path / "b")
    s, p = topk.summary, plain.summary
    assert s["bytes_up"] < s["bytes_dense_up"]
    assert s["compression_ratio_up"] == pytest.approx(s["bytes_dense_up"] / s["bytes_up"])
    # dense sizes are what the uncompressed run sent (headers differ by a few digits)
    assert s["bytes_dense_up"] == pytest.approx(p["bytes_up"], rel=1e-3)
    assert p["compression_ratio_up"] == 1.0
    assert s["bytes_down"] == p["bytes_down"]  # the model still goes down dense


def test_user_aggregator_by_import_path(tiny_config, tmp_path, monkeypatch):
    """An aggregator from the user's package: the global model becomes the update of the
    device with the smallest id, which the test computes independently."""
    (tmp_path / "my_rules.py").write_text(
        textwrap.dedent(
            """
            def first_origin(updates, rng, reference=None):
                return dict(min(updates, key=lambda u: u.origin).state)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(tiny_config, ["rounds=1", "federation.aggregator='my_rules:first_origin'"])
    exp = build(cfg)
    _, _, updates = exp.coordinator.round(exp.transport, exp.initial_state, exp.rng, 1)
    first = min(updates, key=lambda u: u.origin)
    exp = build(cfg)
    hist = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 1)
    assert all(torch.equal(hist.final_state[k], first.state[k]) for k in first.state)
    sys.modules.pop("my_rules", None)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "compression=[{link='device-cloud', method='topk', ratoi=0.1}]",
            "compression[0].ratoi: got 0.1; allowed: a parameter of 'topk': one of ratio,",
        ),
        (
            "compression=[{link='device-edge', method='topk'}]",
            "compression[0].link: got 'device-edge'; allowed: a link of 'fedavg': device-cloud",
        ),
        (
            "compression=[{link='device-cloud', method='gzip'}]",
            "compression[0].method: got 'gzip'; allowed: one of fp16, qsgd,",
        ),
        (
            "compression=[{link='device-cloud', method='qsgd', levels=0}]",
            "compression[0].levels: got 0",
        ),
        ("federation.aggregator='clipped_mean'", "parameter max_norm: got 'missing'"),
        (
            "federation.interserver_params={gama=0.3}",
            "federation.interserver_params (spaa) parameter: got 'gama'",
        ),
        ("federation.selection='fastest'", "federation.selection: got 'fastest'; allowed: one of"),
        (
            "federation.selection='deadline_aware'",
            "federation.selection: got 'deadline_aware'; allowed: another selection, or",
        ),
        ("engine='warp'", "engine: got 'warp'; allowed: one of grpc, local, ray"),
        (
            "algorithm='no_such_pkg:algo'",
            "algorithm: got 'no_such_pkg:algo'; allowed: an importable",
        ),
    ],
)
def test_bad_seam_settings_exit_2_before_any_work(capsys, tiny_config, override, expected):
    code, out = run_cli(capsys, "run", str(tiny_config), "--set", override)
    assert code == 2
    assert out.err.startswith("fedge: error: ")
    assert expected in out.err, out.err
    assert len(out.err.strip().splitlines()) == 1


def test_a_topology_file_rejects_the_keys_it_defines(capsys, tmp_path):
    topo = tmp_path / "topo.toml"
    topo.write_text("")
    config = tmp_path / "file.toml"
    config.write_text(
        f"[system]\ntopology = 'file'\ntopology_file = '{topo.as_posix()}'\n"
        "[system.wan]\nlatency_ms = 5.0\n"
    )
    code, out = run_cli(capsys, "run", str(config))
    assert code == 2
    assert "system.wan: got 'set'; allowed: nothing with system.topology = 'file'" in out.err


def test_user_algorithm_and_compressor_by_import_path(tiny_config, tmp_path, monkeypatch):
    """An algorithm registered nowhere but the user's module (reusing [federation]) and a
    compressor of the user's own: the run uses both, and the compressor saw every update."""
    (tmp_path / "my_fl.py").write_text(
        textwrap.dedent(
            """
            from fedge.algorithms.base import AlgorithmSpec
            from fedge.algorithms.federation import FederationSettings, assemble_fedavg
            from fedge.core.codec import encoded
            from fedge.core.codecs import encode_fp16

            SEEN = []

            def assemble(ctx):
                SEEN.append("assembled")
                return assemble_fedavg(ctx)

            MINE = AlgorithmSpec(
                "mine", "FedAvg by another name", assemble, FederationSettings,
                links=("device-cloud",),
            )

            class Half:
                def send(self, update, memory, rng):
                    SEEN.append(update.kind)
                    return encoded(update, "fp16", encode_fp16(update.state))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sets = [
        "rounds=1",
        "algorithm='my_fl:MINE'",
        "compression=[{link='device-cloud', method='my_fl:Half'}]",
    ]
    result = run_experiment(load_config(tiny_config, sets), out_dir=tmp_path / "out")
    seen = sys.modules["my_fl"].SEEN
    assert seen[0] == "assembled" and seen[1:] == ["delta"] * 4  # clients_per_round = 4
    assert result.summary["compression_ratio_up"] > 1.9  # fp16: about half the bytes
    sys.modules.pop("my_fl", None)

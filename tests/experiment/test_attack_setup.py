"""[[attack]] on built experiments: who attacks, what their apps send, bad configs."""

import subprocess
import sys

import pytest
import torch

from fedge.core.errors import ConfigError
from fedge.core.message import Message
from fedge.core.update import Update, flatten
from fedge.experiment.build import build
from fedge.experiment.config import load_config


def attack(**entry):
    items = ", ".join(f"{k} = {v!r}" for k, v in entry.items())
    return "attack=[{" + items.replace("'", '"') + "}]"


def train_reply(exp, device, r=1):
    msg = Message("cloud", device, "train", r, {"model": Update(exp.initial_state, round=r)})
    return exp.transport.send([msg])[0].payload["update"]


def test_share_draws_floor_share_times_n_with_the_seed_and_records_them(tiny_config):
    cfg = load_config(tiny_config, [attack(kind="sign_flip", share=0.3)])
    exp = build(cfg)
    (plan,) = exp.attacks
    assert len(plan.nodes) == 3 and set(plan.nodes) <= set(exp.system.ids("device"))
    assert build(cfg).attacks[0].nodes == plan.nodes  # same seed, same attackers
    other = build(load_config(tiny_config, [attack(kind="sign_flip", share=0.3), "seed=11"]))
    assert other.attacks[0].nodes != plan.nodes
    assert exp.partition_report()["attacks"][0]["nodes"] == list(plan.nodes)
    assert exp.attackers() == frozenset(plan.nodes)


def test_explicit_ids_pick_those_devices_and_only_they_are_poisoned(tiny_config):
    honest = build(load_config(tiny_config))
    exp = build(load_config(tiny_config, [attack(kind="sign_flip", nodes=["dev3"], scale=2.0)]))
    assert exp.attacks[0].nodes == ("dev3",)
    ref = flatten(exp.initial_state)
    trained = flatten(train_reply(honest, "dev3").state) - ref
    sent = train_reply(exp, "dev3")
    assert sent.kind == "delta"
    assert torch.allclose(flatten(sent.state), -2.0 * trained, atol=1e-6)
    assert torch.equal(
        flatten(train_reply(exp, "dev4").state), flatten(train_reply(honest, "dev4").state)
    )


def test_start_round_delays_the_attack(tiny_config):
    exp = build(
        load_config(tiny_config, [attack(kind="label_flip", nodes=["dev1"], start_round=2)])
    )
    honest = build(load_config(tiny_config))
    assert torch.equal(
        flatten(train_reply(exp, "dev1", 1).state), flatten(train_reply(honest, "dev1", 1).state)
    )
    assert not torch.equal(
        flatten(train_reply(exp, "dev1", 2).state), flatten(train_reply(honest, "dev1", 2).state)
    )


def test_label_flip_trains_on_flipped_labels(tiny_config):
    exp = build(load_config(tiny_config, [attack(kind="label_flip", nodes=["dev2"])]))
    switch = exp.nodes.apps["dev2"].handlers["train"].__self__
    assert torch.equal(switch.poisoned.data.y, 9 - switch.honest.data.y)
    assert torch.equal(switch.poisoned.data.x, switch.honest.data.x)


@pytest.mark.parametrize(
    ("overrides", "field", "allowed"),
    [
        ([attack(kind="sign_flip", share=1.0)], "attack[0].share", "[0, 1)"),
        ([attack(kind="sign_flip", share=-0.1)], "attack[0].share", "[0, 1)"),
        ([attack(kind="sign_flip", nodes=["dev99"])], "attack[0].nodes", "dev0"),
        ([attack(kind="sign_flip", share=0.1, tier="edge")], "attack[0].tier", "device"),
        ([attack(kind="sign_flip", share=0.1, tier="cloud")], "attack[0].tier", "device, edge"),
        ([attack(kind="flip", share=0.1)], "attack[0].kind", "sign_flip"),
        ([attack(kind="sign_flip", share=0.1, power=2)], "attack[0].power", "scale"),
        ([attack(kind="gaussian", share=0.1, std=-1.0)], "attack[0].std", ">= 0"),
        ([attack(kind="sign_flip")], "attack[0]", "share or nodes"),
        (
            ["algorithm='msfl'", attack(kind="label_flip", nodes=["edge0"], tier="edge")],
            "attack[0].tier",
            "'device'",
        ),
        (["federation.malicious_edges=['edge1']"], "federation.malicious_edges", "[[attack]]"),
    ],
)
def test_bad_attack_configs_name_the_field(tiny_config, overrides, field, allowed):
    with pytest.raises(ConfigError) as err:
        build(load_config(tiny_config, overrides))
    assert err.value.field == field
    assert allowed in err.value.allowed


def test_cli_exits_2_on_a_bad_attack(tiny_config):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedge.cli",
            "run",
            str(tiny_config),
            "--set",
            attack(kind="sign_flip", share=1.5),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "attack[0].share" in proc.stderr and "Traceback" not in proc.stderr


def test_an_hfl_edge_attacker_poisons_its_uplink_to_the_cloud(tiny_config):
    sets = [
        "algorithm='hierarchical'",
        attack(kind="scaled", nodes=["edge1"], tier="edge", scale=-2.0),
    ]
    exp = build(load_config(tiny_config, sets))
    honest = build(load_config(tiny_config, ["algorithm='hierarchical'"]))
    payload = {"model": Update(exp.initial_state, round=1), "edge_rounds": 1, "first_round": 1}
    sent, kept = (
        e.transport.send([Message("cloud", "edge1", "edge_train", 1, payload)])[0].payload["update"]
        for e in (exp, honest)
    )
    ref = flatten(exp.initial_state)
    assert sent.kind == "delta" and kept.kind == "state"
    assert torch.allclose(flatten(sent.state), -2.0 * (flatten(kept.state) - ref), atol=1e-5)

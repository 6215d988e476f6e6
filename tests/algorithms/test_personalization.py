"""Personalization: fine-tuning after any federated algorithm, FedPer, Ditto (SPEC §3H)."""

import itertools
import json

import numpy as np
import pytest
import torch

from fedge.algorithms.personalization import ditto_step, head_keys, without
from fedge.cli import main
from fedge.core import ConfigError
from fedge.core.node import derive_seed
from fedge.core.update import Update, flatten, state_nbytes
from fedge.experiment.build import build
from fedge.experiment.config import load_config
from fedge.learning import evaluate, load_state, local_train, state_of
from fedge.runs import resume_experiment, run_experiment
from fedge.runtime import NodeSet


def built(tiny_config, *sets):
    return build(load_config(tiny_config, list(sets)))


def run_rounds(exp, rounds):
    return exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, rounds)


def spy(monkeypatch):
    """Every (request, reply) a node set delivers, in order."""
    seen = []
    original = NodeSet.deliver

    def deliver(self, message, downstream):
        reply, work = original(self, message, downstream)
        seen.append((message, reply))
        return reply, work

    monkeypatch.setattr(NodeSet, "deliver", deliver)
    return seen


def own_test(exp, device):
    """The device's own test split, as its personal_eval handler holds it."""
    return exp.nodes.apps[device].handlers["personal_eval"].__self__.test


def updates_in(message):
    return [v for v in message.payload.values() if isinstance(v, Update)]


# -- FedPer -------------------------------------------------------------------------------


def test_fedper_never_sends_the_head(tiny_config, monkeypatch):
    exp = built(tiny_config, "algorithm='fedper'", "rounds=2")
    head = head_keys(exp.model, 1)
    # the mlp's last Linear: its weight and bias, as the model's own module list says
    last = [m for m in exp.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert sum(exp.model.state_dict()[k].numel() for k in head) == sum(
        p.numel() for p in last.parameters()
    )
    seen = spy(monkeypatch)
    run_rounds(exp, 2)
    body_bytes = state_nbytes(without(exp.initial_state, head))
    trains = [(m, r) for m, r in seen if m.kind == "train"]
    assert trains
    for message, reply in seen:
        for update in updates_in(message) + updates_in(reply):
            assert not set(head) & set(update.state), message.kind
    for message, reply in trains:
        assert message.payload["model"].nbytes() == body_bytes
        assert reply.payload["update"].nbytes() == body_bytes
    # what the ledger charged on the device-edge links is exactly these messages
    stats = exp.transport.stats()
    assert stats["bytes_up_device_edge"] == sum(r.nbytes() for _, r in seen)
    assert stats["bytes_down_device_edge"] == sum(m.nbytes() for m, _ in seen)
    # every device that trained keeps a head of its own that differs from the initial one
    for message, _ in trains:
        kept = exp.nodes.apps[message.dst].state["head"]
        assert sorted(kept) == sorted(head)
        assert not torch.equal(kept[head[0]], exp.initial_state[head[0]])


def test_fedper_evaluates_body_with_own_head(tiny_config):
    exp = built(tiny_config, "algorithm='fedper'", "rounds=2")
    history = run_rounds(exp, 2)
    row = history.metrics[-1]
    body = without(history.final_state, head_keys(exp.model, 1))
    accs = []
    for d in exp.system.ids("device"):
        head = exp.nodes.apps[d].state.get("head", {})
        load_state(exp.model, {**exp.initial_state, **body, **head})
        accs.append(evaluate(exp.model, own_test(exp, d)).accuracy)
    assert row["accuracy"] == pytest.approx(np.mean(accs))
    assert row["accuracy_std"] == pytest.approx(np.std(accs))
    assert row["accuracy_min"] == pytest.approx(min(accs))
    assert row["accuracy_p90"] == pytest.approx(np.percentile(accs, 90))
    assert "global_model_accuracy" not in row  # FedPer has no global model


def test_fedper_head_layers_must_leave_a_body(tiny_config):
    with pytest.raises(ConfigError) as err:
        built(tiny_config, "algorithm='fedper'", "personalization.head_layers=9")
    assert err.value.field == "personalization.head_layers"


# -- Ditto --------------------------------------------------------------------------------


def test_ditto_with_lambda_zero_is_pure_local_sgd(tiny_config, monkeypatch):
    exp = built(tiny_config, "algorithm='ditto'", "rounds=1", "personalization.ditto_lambda=0")
    seen = spy(monkeypatch)
    run_rounds(exp, 1)
    chosen = [m.dst for m, _ in seen if m.kind == "train"]
    assert chosen
    node_seed = derive_seed(exp.config.seed, "apps")
    for d in chosen:
        rng = np.random.default_rng(derive_seed(node_seed, d, 1, "train"))
        rng.integers(2**62)  # the draw of the global model's local training
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        data = exp.nodes.apps[d].handlers["train"].__self__.trainer.data
        load_state(exp.model, exp.initial_state)
        local_train(exp.model, data, exp.config.training, gen)
        expected = state_of(exp.model)
        personal = exp.nodes.apps[d].state["personal"]
        for key, tensor in expected.items():
            assert torch.equal(personal[key], tensor), (d, key)


def test_ditto_personal_model_approaches_the_global_one_as_lambda_grows(tiny_config):
    exp = built(tiny_config, "algorithm='ditto'")
    trainer = exp.nodes.apps["dev0"].handlers["train"].__self__.trainer
    other = exp.nodes.apps["dev5"].handlers["train"].__self__.trainer.data
    start = exp.initial_state
    cfg = exp.config.training.model_copy(update={"lr": 0.05, "epochs": 3})
    load_state(exp.model, start)  # a global model w trained on another device's data
    local_train(exp.model, other, cfg.model_copy(update={"epochs": 10}), gen(1))
    target = state_of(exp.model)

    def personal(lam, w=target):
        return ditto_step(exp.model, start, w, trainer.data, cfg, lam, gen(7))[0]

    def distance(lam):
        return float(torch.linalg.vector_norm(flatten(personal(lam)) - flatten(target)))

    d = [distance(lam) for lam in (0.0, 0.3, 1.0, 5.0, 19.0)]
    assert all(a > b for a, b in itertools.pairwise(d))
    assert d[-1] < 0.15 * d[0]
    # λ = 0 does not look at w at all
    for key, tensor in personal(0.0).items():
        assert torch.equal(tensor, personal(0.0, start)[key])


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_ditto_reports_personal_and_global_accuracy(tiny_config):
    exp = built(tiny_config, "algorithm='ditto'", "rounds=2")
    history = run_rounds(exp, 2)
    row = history.metrics[-1]
    accs = []
    for d in exp.system.ids("device"):
        load_state(exp.model, exp.nodes.apps[d].state.get("personal", exp.initial_state))
        accs.append(evaluate(exp.model, own_test(exp, d)).accuracy)
    assert row["accuracy"] == pytest.approx(np.mean(accs))
    load_state(exp.model, history.final_state)
    assert row["global_model_accuracy"] == pytest.approx(evaluate(exp.model, exp.test).accuracy)


# -- fine-tuning --------------------------------------------------------------------------


def test_finetune_zero_evaluates_the_global_model_on_each_own_split(tiny_config):
    exp = built(tiny_config, "personalization.finetune_epochs=0", "rounds=2")
    history = run_rounds(exp, 2)
    row = history.metrics[-1]
    accs = []
    for d in exp.system.ids("device"):
        load_state(exp.model, history.final_state)
        accs.append(evaluate(exp.model, own_test(exp, d)).accuracy)
    assert row["accuracy"] == pytest.approx(np.mean(accs))
    assert row["accuracy_min"] == pytest.approx(min(accs))
    assert row["accuracy_max"] == pytest.approx(max(accs))
    assert row["accuracy_std"] == pytest.approx(np.std(accs))
    assert row["accuracy_p10"] == pytest.approx(np.percentile(accs, 10))
    load_state(exp.model, history.final_state)
    assert row["global_model_accuracy"] == pytest.approx(evaluate(exp.model, exp.test).accuracy)


def test_finetuning_changes_only_the_evaluation_and_is_charged(tiny_config):
    plain = built(tiny_config, "personalization.finetune_epochs=0", "rounds=2")
    tuned = built(tiny_config, "personalization.finetune_epochs=3", "rounds=2")
    a, b = run_rounds(plain, 2), run_rounds(tuned, 2)
    for key, tensor in a.final_state.items():  # the global model is untouched
        assert torch.equal(tensor, b.final_state[key])
    assert a.metrics[-1]["global_model_accuracy"] == b.metrics[-1]["global_model_accuracy"]
    assert b.metrics[-1]["accuracy"] > a.metrics[-1]["accuracy"]
    sa, sb = plain.transport.stats(), tuned.transport.stats()
    samples = sum(len(d) for d in (own_train(tuned, x) for x in tuned.system.ids("device")))
    extra = (
        3
        * samples
        * tuned.nodes.apps["dev0"].handlers["personal_eval"].__self__.trainer.flops_per_sample
    )
    assert sb["flops"] - sa["flops"] == pytest.approx(2 * extra, rel=1e-9)  # rounds 1 and 2
    assert sb["energy_j_device"] > sa["energy_j_device"]


def own_train(exp, device):
    return exp.nodes.apps[device].handlers["personal_eval"].__self__.trainer.data


def test_finetuning_works_after_hierarchical_fl(tiny_config):
    exp = built(tiny_config, "algorithm='hierarchical'", "personalization.finetune_epochs=1")
    history = run_rounds(exp, 1)
    assert history.metrics[-1]["evaluated_devices"] == 10
    assert 0 <= history.metrics[-1]["accuracy_min"] <= history.metrics[-1]["accuracy"]


def test_finetune_off_keeps_the_global_evaluation(tiny_config):
    exp = built(tiny_config, "rounds=1")
    assert not any("personal_eval" in app.handlers for app in exp.nodes.apps.values())


@pytest.mark.parametrize(
    ("sets", "field"),
    [
        (["personalization.finetune_epochs=1", "data.local_test_fraction=0"],
         "data.local_test_fraction"),
        (["algorithm='fedper'", "data.local_test_fraction=0"], "data.local_test_fraction"),
        (["algorithm='dpmn'", "personalization.finetune_epochs=1"],
         "personalization.finetune_epochs"),
        (["algorithm='msfl'", "personalization.finetune_epochs=1"],
         "personalization.finetune_epochs"),
        (["personalization.finetune_epochs=-1"], "personalization.finetune_epochs"),
        (["personalization.finetune_lr=0"], "personalization.finetune_lr"),
        (["personalization.ditto_lambda=-1"], "personalization.ditto_lambda"),
        (["personalization.heads=1"], "personalization.heads"),
    ],
)  # fmt: skip
def test_bad_personalization_configs_name_the_field(tiny_config, sets, field):
    with pytest.raises(ConfigError) as err:
        built(tiny_config, *sets)
    assert err.value.field == field


def test_cli_exits_2_naming_the_field(tiny_config, capsys):
    code = main(["run", str(tiny_config), "--set", "personalization.finetune_epochs=2",
                 "--set", "data.local_test_fraction=0"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "data.local_test_fraction" in err and "Traceback" not in err


# -- checkpoints --------------------------------------------------------------------------


class Interrupted(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["fedper", "ditto", "clustered_hfl"])
def test_personal_state_survives_resume(tiny_config, tmp_path, monkeypatch, algorithm):
    sets = [f"algorithm='{algorithm}'", "rounds=3", "clustering.eps1=1e9", "clustering.eps2=0"]
    full = run_experiment(load_config(tiny_config, sets), out_dir=tmp_path / "full")
    original = NodeSet.deliver
    count = [0]

    def deliver(self, message, downstream):
        if message.round == 3:
            count[0] += 1
            if count[0] > 2:
                raise Interrupted
        return original(self, message, downstream)

    with monkeypatch.context() as patch:
        patch.setattr(NodeSet, "deliver", deliver)
        with pytest.raises(Interrupted):
            run_experiment(load_config(tiny_config, sets), out_dir=tmp_path / "cut")
    run_dir = next(p for p in (tmp_path / "cut").iterdir() if p.is_dir())
    resumed = resume_experiment(run_dir)

    def strip(rows):
        return [json.dumps({k: v for k, v in r.items() if "wall" not in k}) for r in rows]

    assert strip(resumed.rows) == strip(full.rows)
    if algorithm == "clustered_hfl":  # the clusters were split before the cut and kept
        assert full.rows[1]["clusters"] > 1

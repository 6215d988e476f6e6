"""Personalized evaluation of a large population samples the devices it evaluates."""

from pathlib import Path

from fedge.experiment.build import build
from fedge.experiment.config import load_config


def _round(tiny_config: Path, sample: int) -> dict[str, float]:
    cfg = load_config(tiny_config, ['algorithm="dfl"', f"federation.eval_devices={sample}"])
    exp = build(cfg)
    history = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, 1)
    return dict(history.metrics[-1])


def test_a_sample_of_devices_is_evaluated_and_reported(tiny_config: Path) -> None:
    full, sampled = _round(tiny_config, 0), _round(tiny_config, 3)
    assert "eval_devices" not in full and sampled["eval_devices"] == 3.0
    # sampling changes only who is evaluated, not the training
    assert sampled["train_loss"] == full["train_loss"]
    assert full["accuracy_min"] <= sampled["accuracy"] <= full["accuracy_max"]

"""Local training, evaluation, model state helpers, and metrics against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sk_confusion

from fedge.core.errors import ConfigError
from fedge.core.update import Work
from fedge.learning.data import make_synthetic
from fedge.learning.metrics import classification_metrics
from fedge.learning.models import build_model
from fedge.learning.training import (
    TrainConfig,
    evaluate,
    load_state,
    local_train,
    minibatches,
    state_of,
)

TRAIN, TEST = make_synthetic(n_train=600, n_test=200, n_features=10, n_classes=4, seed=1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def distance(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> float:
    return float(sum(((p.detach() - state[k]) ** 2).sum() for k, p in model.named_parameters()))


def test_local_train_reduces_the_loss() -> None:
    model = build_model("mlp", (10,), 4)
    before = evaluate(model, TEST)
    result = local_train(model, TRAIN, TrainConfig(lr=0.05, epochs=3), gen())
    after = evaluate(model, TEST)
    assert after.loss < 0.7 * before.loss and after.accuracy > 0.8
    assert result.samples == 3 * 600 and result.steps == 3 * 19
    assert 0 < result.loss < before.loss


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_same_seed_gives_bit_identical_weights(optimizer: str) -> None:
    cfg = TrainConfig(optimizer=optimizer, lr=0.01, momentum=0.9 if optimizer == "sgd" else 0)
    models = [build_model("lenet5", (1, 8, 8), 4, seed=0) for _ in range(3)]
    data, _ = make_synthetic(n_train=96, n_test=1, input_shape=(1, 8, 8), n_classes=4)
    for model, seed in zip(models, (5, 5, 6), strict=True):
        local_train(model, data, cfg, gen(seed))
    a, b, c = (state_of(m) for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_steps_mode_runs_exactly_that_many_batches() -> None:
    model = build_model("mlp", (10,), 4)
    result = local_train(model, TRAIN, TrainConfig(steps=45, batch_size=32, epochs=9), gen())
    assert result.steps == 45
    batches = list(minibatches(600, TrainConfig(steps=45, batch_size=32), gen()))
    assert result.samples == sum(len(b) for b in batches) and len(batches) == 45
    first_epoch = torch.cat(batches[:19])
    assert sorted(first_epoch.tolist()) == list(range(600))  # a permutation per epoch


def test_proximal_term_keeps_weights_near_the_global_model() -> None:
    start = build_model("mlp", (10,), 4, seed=1)
    anchor = state_of(start)
    far, near = build_model("mlp", (10,), 4, seed=1), build_model("mlp", (10,), 4, seed=1)
    local_train(far, TRAIN, TrainConfig(lr=0.1, epochs=2), gen(), anchor)
    local_train(near, TRAIN, TrainConfig(lr=0.1, epochs=2, proximal_mu=1.0), gen(), anchor)
    assert distance(near, anchor) < 0.7 * distance(far, anchor)


def test_proximal_step_equals_the_fedprox_objective() -> None:
    """One SGD step with mu > 0 equals a step on CE + mu/2·||w - w_global||² by autograd."""
    anchor = {k: v + 0.1 for k, v in state_of(build_model("mlp", (10,), 4, seed=2)).items()}
    ours, manual = build_model("mlp", (10,), 4, seed=2), build_model("mlp", (10,), 4, seed=2)
    cfg = TrainConfig(lr=0.1, steps=1, batch_size=600, proximal_mu=0.5)
    local_train(ours, TRAIN, cfg, gen(), anchor)
    idx = next(iter(minibatches(600, cfg, gen())))
    loss = torch.nn.functional.cross_entropy(manual(TRAIN.x[idx]), TRAIN.y[idx])
    prox = sum(((p - anchor[k]) ** 2).sum() for k, p in manual.named_parameters())
    (loss + 0.25 * prox).backward()
    with torch.no_grad():
        for p in manual.parameters():
            p -= 0.1 * p.grad
    for k, v in state_of(manual).items():
        torch.testing.assert_close(state_of(ours)[k], v)


def test_proximal_term_needs_the_global_parameters() -> None:
    model = build_model("mlp", (10,), 4)
    with pytest.raises(ConfigError, match="global_params"):
        local_train(model, TRAIN, TrainConfig(proximal_mu=0.1), gen())
    with pytest.raises(ConfigError, match="missing"):
        local_train(model, TRAIN, TrainConfig(proximal_mu=0.1), gen(), {})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"lr": 0.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"steps": -1}, "steps"),
        ({"proximal_mu": -0.1}, "proximal_mu"),
        ({"momentum": -1.0}, "momentum"),
    ],
)
def test_train_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(**kwargs)
    assert info.value.field == f"training.{field}"


def test_empty_dataset_trains_nothing() -> None:
    model = build_model("mlp", (10,), 4)
    before = state_of(model)
    result = local_train(model, TRAIN.subset(np.array([], dtype=np.int64)), TrainConfig(), gen())
    assert (result.samples, result.steps) == (0, 0)
    assert all(torch.equal(before[k], v) for k, v in state_of(model).items())


def test_work_uses_the_profiled_flops() -> None:
    result = local_train(build_model("mlp", (10,), 4), TRAIN, TrainConfig(steps=2), gen())
    assert result.work(100.0) == Work(64, 6400.0)


def test_evaluate_matches_sklearn_and_restores_mode() -> None:
    model = build_model("mlp", (10,), 4)
    local_train(model, TRAIN, TrainConfig(steps=5), gen())
    model.train()
    res = evaluate(model, TEST, batch_size=64)
    assert model.training
    preds = model.eval()(TEST.x).argmax(1).numpy()
    p, r, f, _ = precision_recall_fscore_support(
        TEST.labels, preds, average="macro", zero_division=0
    )
    assert res.accuracy == pytest.approx(accuracy_score(TEST.labels, preds))
    assert (res.precision, res.recall, res.f1) == pytest.approx((p, r, f))
    assert res.n == 200 and res.confusion.sum() == 200
    assert set(res.as_dict()) == {"loss", "accuracy", "precision", "recall", "f1", "n"}


def test_state_of_clones_and_load_state_restores() -> None:
    model = build_model("resnet_small", (1, 8, 8), 4)
    saved = state_of(model)
    assert "bn1.running_mean" in saved
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.equal(saved["conv1.weight"], model.state_dict()["conv1.weight"])
    load_state(model, saved)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="state"):
        load_state(model, {"conv1.weight": saved["conv1.weight"]})


@settings(max_examples=60, deadline=None)
@given(
    n_classes=st.integers(2, 6),
    pairs=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=60),
)
def test_metrics_equal_sklearn(n_classes: int, pairs: list[tuple[int, int]]) -> None:
    y_true = np.array([t % n_classes for t, _ in pairs])
    y_pred = np.array([p % n_classes for _, p in pairs])
    ours = classification_metrics(y_true, y_pred, n_classes)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((p, r, f))
    assert ours["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    expected = sk_confusion(y_true, y_pred, labels=list(range(n_classes)))
    np.testing.assert_array_equal(ours["confusion"], expected)


def test_metrics_reject_out_of_range_labels() -> None:
    with pytest.raises(ConfigError, match="labels"):
        classification_metrics(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ConfigError, match="y_pred"):
        classification_metrics(np.array([0, 1]), np.array([0]), 3)

"""Classification metrics from a confusion matrix: accuracy, macro precision / recall / F1.

Macro averages run over the classes present in the truth or in the predictions (classes
absent from both are ignored), and a ratio with a zero denominator counts as 0, exactly as
scikit-learn's ``precision_recall_fscore_support(average="macro", zero_division=0)``.
The macro F1 is the mean of the per-class F1 scores (not the F1 of macro P and R).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedge.core.errors import ConfigError


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """n_classes × n_classes counts; row = true class, column = predicted class."""
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise ConfigError("y_pred", p.shape, f"as many predictions as labels {t.shape}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ConfigError(
            "labels",
            (int(min(t.min(), p.min())), int(max(t.max(), p.max()))),
            f"class ids in 0..{n_classes - 1}",
        )
    flat = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.divide(num, den, out=np.zeros(len(num)), where=den > 0)
    return out


def metrics_from_confusion(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1 of a confusion matrix."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    present = (predicted + actual) > 0
    total = cm.sum()
    if total == 0:
        return {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    precision = _ratio(tp, predicted)[present]
    recall = _ratio(tp, actual)[present]
    f1 = _ratio(2 * tp, predicted + actual)[present]  # = 2PR / (P + R), 0 when undefined
    return {
        "accuracy": float(tp.sum() / total),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
    }


def classification_metrics(y_true: Any, y_pred: Any, n_classes: int) -> dict[str, Any]:
    """accuracy, macro precision / recall / f1 (floats) and the confusion matrix (array)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    return {**metrics_from_confusion(cm), "confusion": cm}

"""Classification metrics on host arrays: ``confusion_matrix``, macro precision / recall / F1
(averaged over the classes present in the labels or predictions, as scikit-learn's
``average="macro"``; a class with no predictions has precision 0), and top-k accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int | None = None) -> np.ndarray:
    """``cm[i, j]`` = rows of true class ``i`` predicted as ``j`` (integer labels ``0..k-1``)."""
    t = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(y_pred).astype(np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if t.size and (min(t.min(), p.min()) < 0):
        raise ValueError("labels must be non-negative class indices")
    largest = max(t.max(initial=-1), p.max(initial=-1))
    k = int(n_classes) if n_classes is not None else int(largest) + 1
    if t.size and max(t.max(), p.max()) >= k:
        raise ValueError(f"labels must be below n_classes={k}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def macro_scores(cm: np.ndarray) -> dict[str, float]:
    """Macro precision, recall and F1 from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp, predicted, actual = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    present = (predicted + actual) > 0
    if not present.any():
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "precision": float(precision[present].mean()),
        "recall": float(recall[present].mean()),
        "f1": float(f1[present].mean()),
    }


def top_k_correct(scores: Any, labels: Any, k: int, xp: Any = np) -> Any:
    """How many rows have their label among the ``k`` highest scores (ties count against)."""
    label_scores = xp.take_along_axis(scores, labels.reshape(-1, 1), axis=1)
    higher = (scores > label_scores).sum(axis=1)
    return (higher < k).sum()


def top_k_accuracy(scores: Any, labels: Any, k: int = 5) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores."""
    scores, labels = np.asarray(scores), np.asarray(labels).astype(np.int64)
    return float(top_k_correct(scores, labels, k)) / max(len(labels), 1)


__all__ = ["confusion_matrix", "macro_scores", "top_k_accuracy", "top_k_correct"]

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


def regression_sums(outputs: Any, targets: Any) -> np.ndarray:
    """Per output column: summed absolute errors, squared errors, targets and squared targets
    (reducible over batches and ranks; ``regression_scores`` turns them into MAE/RMSE/R2)."""
    o = np.asarray(outputs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64).reshape(o.shape)
    e = o - t
    return np.concatenate([np.abs(e).sum(0), (e * e).sum(0), t.sum(0), (t * t).sum(0)])


def regression_scores(sums: np.ndarray, n: int) -> dict[str, float]:
    """MAE, RMSE (over every output) and R2 (averaged over the columns, as scikit-learn's
    ``r2_score``) from ``regression_sums`` of ``n`` rows."""
    abs_err, sq_err, t_sum, t_sq = np.asarray(sums, dtype=np.float64).reshape(4, -1)
    total = sq_err.sum() / max(n * sq_err.size, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = t_sq - t_sum * t_sum / max(n, 1)
        r2 = np.where(spread > 0, 1 - sq_err / spread, np.where(sq_err > 0, 0.0, 1.0))
    return {
        "mae": float(abs_err.sum() / max(n * abs_err.size, 1)),
        "rmse": float(np.sqrt(total)),
        "r2": float(r2.mean()),
    }


def metric_name(f: Any) -> str:
    """The log name of a user metric (its ``__name__``)."""
    return str(getattr(f, "__name__", type(f).__name__))


def check_metrics(metrics: Any) -> list:
    """User metrics: callables ``f(y_true, y_pred) -> float`` with distinct names."""
    if callable(metrics) or isinstance(metrics, (str, bytes)):
        metrics = [metrics]
    found = list(metrics)
    for f in found:
        if not callable(f):
            raise TypeError(f"metrics must be functions f(y_true, y_pred) -> float, got {f!r}")
    names = [metric_name(f) for f in found]
    if len(set(names)) != len(names):
        raise ValueError(f"metrics need distinct names, got {names}")
    return found


__all__ = [
    "check_metrics",
    "confusion_matrix",
    "macro_scores",
    "metric_name",
    "regression_scores",
    "regression_sums",
    "top_k_accuracy",
    "top_k_correct",
]

"""Classification metrics on host arrays: ``confusion_matrix``, macro precision / recall / F1
(averaged over the classes present in the labels or predictions, as scikit-learn's
``average="macro"``; a class with no predictions has precision 0), and top-k accuracy. Also
the names of log entries (``higher_is_better``, aliases) and user metrics (``on_labels``)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from fastnet.validation import check_count


def confusion_matrix(
    y_true: Any, y_pred: Any, n_classes: int | None = None, sample_weight: Any = None
) -> np.ndarray:
    """``cm[i, j]`` = rows of true class ``i`` predicted as ``j`` (integer labels ``0..k-1``);
    with ``sample_weight``, their summed weights."""
    t, p = _class_indices(y_true, "y_true"), _class_indices(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if t.size and (min(t.min(), p.min()) < 0):
        raise ValueError("labels must be non-negative class indices")
    largest = max(t.max(initial=-1), p.max(initial=-1))
    k = int(n_classes) if n_classes is not None else int(largest) + 1
    if t.size and max(t.max(), p.max()) >= k:
        raise ValueError(f"labels must be below n_classes={k}")
    weights = None if sample_weight is None else np.asarray(sample_weight, np.float64).ravel()
    return np.bincount(t * k + p, weights, minlength=k * k).reshape(k, k)


def _class_indices(labels: Any, name: str) -> np.ndarray:
    """``labels`` flat as int64, refused where a cast would change them (2.5, NaN, "a") or
    where they are not one per row (one-hot rows: their ``argmax(axis=1)`` is)."""
    a = np.asarray(labels)
    if a.ndim > 1 and a.shape[1:] != (1,) * (a.ndim - 1):
        raise ValueError(
            f"{name} has shape {a.shape}: one class label per row (one-hot rows: argmax(axis=1))"
        )
    a = a.ravel()
    if a.dtype.kind not in "biuf" or (a.dtype.kind == "f" and not np.all(a == np.round(a))):
        raise ValueError(f"{name} must hold integer class labels, got {a.dtype} {a[:3].tolist()}")
    return a.astype(np.int64)


def macro_scores(cm: np.ndarray, present: Any = None) -> dict[str, float]:
    """Macro precision, recall and F1 from a confusion matrix, averaged over the classes
    ``present`` (default: those with a row or column sum; of a weighted matrix, pass the
    classes seen as a label or prediction whatever their weight, as scikit-learn does)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp, predicted, actual = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    present = (predicted + actual) > 0 if present is None else np.asarray(present, bool)
    if not present.any():
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    scores = {"precision": precision, "recall": recall, "f1": f1}
    return {name: float(v[present].mean()) for name, v in scores.items()}


def top_k_correct(scores: Any, labels: Any, k: int, xp: Any = np, weights: Any = None) -> Any:
    """How many rows (their summed ``weights``) have their label among the ``k`` highest
    scores; tied scores rank by class index, lower first, as ``argmax`` (top-1 is accuracy;
    scikit-learn's ``top_k_accuracy_score`` ranks ties higher index first); a row holding
    NaN ranks nothing: a miss."""
    labels = labels.reshape(-1, 1)
    label_scores = xp.take_along_axis(scores, labels, axis=1)
    tied_ahead = (scores == label_scores) & (xp.arange(scores.shape[1]) < labels)
    hits = ((scores > label_scores) | tied_ahead).sum(axis=1) < k
    hits &= ~xp.isnan(scores).any(axis=1)
    return hits.sum() if weights is None else (hits * weights).sum()


def top_k_accuracy(scores: Any, labels: Any, k: int = 5) -> float:
    """Fraction of rows whose label (a class index) is among the ``k`` highest scores."""
    scores, labels = np.asarray(scores), _class_indices(labels, "labels")
    k = check_count(k, "k", 1)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"scores must be one row per label, got {scores.shape} for {len(labels)}")
    if labels.size and not 0 <= labels.min() <= labels.max() < scores.shape[1]:
        raise ValueError(f"labels must be class indices 0 to {scores.shape[1] - 1}")
    return float(top_k_correct(scores, labels, k)) / max(len(labels), 1)


def regression_sums(
    outputs: Any, targets: Any, shift: Any = 0.0, weights: Any = None
) -> np.ndarray:
    """Per output column: summed absolute errors, squared errors, targets and squared targets,
    each row's times its weight (reducible over batches and ranks; ``regression_scores`` turns
    them into MAE/RMSE/R2). The target sums are of ``targets - shift``: one row's targets as
    ``shift``, the same for every batch, keep R2's variance exact for targets far from zero."""
    o = np.asarray(outputs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64).reshape(o.shape)
    e = o - t
    t = t - np.asarray(shift, dtype=np.float64).reshape(-1)
    w = 1.0 if weights is None else np.asarray(weights, np.float64).reshape(-1, 1)
    return np.concatenate([(w * np.abs(e)).sum(0), (w * e * e).sum(0), (w * t).sum(0),
                           (w * t * t).sum(0)])  # fmt: skip


def regression_scores(sums: np.ndarray, n: float) -> dict[str, float]:
    """MAE, RMSE (over every output) and R2 (averaged over the columns, as scikit-learn's
    ``r2_score``) from ``regression_sums`` of ``n`` rows (or of weights summing to ``n``)."""
    abs_err, sq_err, t_sum, t_sq = np.asarray(sums, dtype=np.float64).reshape(4, -1)
    per_value = n * sq_err.size if n > 0 else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = t_sq - t_sum * t_sum / (n if n > 0 else 1.0)
        r2 = np.where(spread > 0, 1 - sq_err / spread, np.where(sq_err > 0, 0.0, 1.0))
    return {
        "mae": float(abs_err.sum() / per_value),
        "rmse": float(np.sqrt(sq_err.sum() / per_value)),
        "r2": float(r2.mean()),
    }


#: Keras's short names of log entries (the epoch lines print them), accepted wherever fastnet
#: takes a log entry's name: callbacks' ``monitor`` and ``ModelCheckpoint`` path keys
ALIASES = {"acc": "accuracy", "val_acc": "val_accuracy"}
#: words of log names: whether a higher value is better (the last such word of a name decides)
BETTER = dict.fromkeys(
    "acc accuracy auc corrcoef f1 precision r2 recall score iou dice jaccard mcc kappa "
    "specificity sensitivity ndcg".split(),
    True,
)
BETTER |= dict.fromkeys(
    "loss error mae mse rmse deviance mape msle hinge entropy cost".split(), False
)


def higher_is_better(name: str) -> bool | None:
    """Whether a higher ``name`` (a log entry, e.g. ``val_r2``, ``val_top5_accuracy`` or a user
    metric's ``val_roc_auc_score``, ``val_accuracyScore``) is better: its last known word
    decides, else a known word inside one (``val_f1score``, ``val_logloss``); False for
    losses and errors, None for a name of no known word; True for scikit-learn's negated
    losses and errors (``val_neg_log_loss``, ``neg_brier_score``)."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    split = re.split(r"[^a-z0-9]+", words)
    found = next((BETTER[w] for w in reversed(split) if w in BETTER), None)
    if found is None:  # joined words (f1score, logloss): a known word of 3+ letters ends one
        ends = [w for w in BETTER if len(w) > 2 and any(t.endswith(w) for t in split)]
        found = BETTER[max(ends, key=len)] if ends else None
    kept = [w for w in split if w]
    if (kept[1:2] if kept[:1] == ["val"] else kept[:1]) == ["neg"] and len(kept) > 1 + (
        kept[0] == "val"
    ):
        return True  # (scikit-learn's neg_* scorers: errors and losses negated)
    return found


def log_name(name: str, names: Collection[str]) -> str | None:
    """``name`` as the epoch logs hold it among ``names``: itself or what its alias stands for
    (``val_acc``: ``val_accuracy``); None when neither is there."""
    return next((n for n in (name, ALIASES.get(name)) if n is not None and n in names), None)


def metric_name(f: Any) -> str:
    """The log name of a user metric (its ``__name__``)."""
    return str(getattr(f, "__name__", type(f).__name__))


class on_labels:  # a function to its users: a wrapped metric
    """``fn(y_true, y_pred)`` as a metric that ``fit``/``evaluate`` call with labels, as
    scikit-learn's ``accuracy_score`` or ``f1_score`` want: ``y_true`` as class indices (of
    one-hot targets too) and ``y_pred`` as ``predict`` returns; (n, 1) columns flattened."""

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"on_labels takes a function f(y_true, y_pred), got {fn!r}")
        self.fn, self.__name__ = fn, metric_name(fn)

    def __call__(self, y_true: Any, y_pred: Any, **kwargs: Any) -> Any:
        return self.fn(y_true, y_pred, **kwargs)


LABELS_HINT = " (y_pred: predict_proba's or predict_raw's output; for labels: metrics.on_labels(f))"


def takes_sample_weight(f: Any) -> bool:
    """Whether metric ``f`` (or the function ``on_labels`` wraps) has a ``sample_weight``
    parameter (or takes any keyword)."""
    try:
        params = inspect.signature(f.fn if isinstance(f, on_labels) else f).parameters
    except (TypeError, ValueError):  # no signature (a builtin)
        return False
    return "sample_weight" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def call_metric(
    f: Any, y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray | None = None
) -> float:
    """``f(y_true, y_pred)`` as a float (``sample_weight=`` too where rows are weighted and
    ``f`` has that parameter, as scikit-learn's metrics; else unweighted, as Keras's
    ``metrics``); any error names the metric and its inputs."""
    weighted = (
        {}
        if sample_weight is None or not takes_sample_weight(f)
        else {"sample_weight": sample_weight}
    )
    try:
        return float(f(y_true, y_pred, **weighted))
    except Exception as exc:
        hint = "" if isinstance(f, on_labels) else LABELS_HINT
        given = f"y_true {y_true.dtype} {y_true.shape}, y_pred {y_pred.dtype} {y_pred.shape}"
        raise ValueError(f"metric {metric_name(f)!r} failed on {given}{hint}: {exc!r}") from exc


def check_metrics(metrics: Any) -> list:
    """User metrics: callables ``f(y_true, y_pred) -> float`` with distinct names (None: none)."""
    if callable(metrics) or isinstance(metrics, (str, bytes)):
        metrics = [metrics]
    reported = ("accuracy", "acc")  # (Keras's metrics=["accuracy"]: the logs hold it already)
    found = [f for f in metrics or () if not (isinstance(f, str) and f.lower() in reported)]
    for f in found:
        if not callable(f):
            raise TypeError(
                f"metrics must be functions f(y_true, y_pred) -> float, got {f!r} (the logs "
                "hold accuracy, and with validation data precision, recall, f1, top-k "
                "accuracy or mae, rmse, r2, already)"
            )
    names = [metric_name(f) for f in found]
    if len(set(names)) != len(names):
        raise ValueError(f"metrics need distinct names, got {names}")
    return found


def check_metric_names(metrics: Sequence[Any], builtin: list[str]) -> None:
    """User metrics must not take a built-in score's name (or alias): it would replace it."""
    for f in metrics:
        name = metric_name(f)
        if name in builtin or name in ALIASES:
            raise ValueError(
                f"metrics: {name!r} names a built-in score (an entry of the logs already); "
                f"give the function another name"
            )


__all__ = [
    "check_metric_names",
    "check_metrics",
    "confusion_matrix",
    "higher_is_better",
    "macro_scores",
    "metric_name",
    "on_labels",
    "regression_scores",
    "regression_sums",
    "top_k_accuracy",
    "top_k_correct",
]

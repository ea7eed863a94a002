"""scikit-learn estimators on top of ``Sequential``: ``MLPClassifier`` and ``MLPRegressor``.

With scikit-learn installed (``pip install scikit-learn``, the ``sklearn`` extra) they are real
scikit-learn estimators (``BaseEstimator`` + ``ClassifierMixin``/``RegressorMixin``, input
validation, tags, ``NotFittedError``), so ``Pipeline``, ``GridSearchCV``, ``cross_val_score``,
``clone`` and ``check_estimator`` work. Without it they keep the same interface stand-alone.
Parameters follow scikit-learn's ``MLPClassifier`` where they mean the same thing (``max_iter``
epochs, ``learning_rate_init``, ``alpha``, ``tol``/``n_iter_no_change``, ``early_stopping``, ...).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import warnings
from typing import Any

import numpy as np

from fastnet.backends.interop import unmasked
from fastnet.builders import mlp
from fastnet.callbacks import Callback, EarlyStopping
from fastnet.layers import Dense
from fastnet.losses import MeanSquaredError, Poisson, get_loss
from fastnet.model import Sequential
from fastnet.optimizers import OPTIMIZERS, Adam, AdamW, Momentum, Optimizer, get_optimizer
from fastnet.schedules import LearningRateScheduler
from fastnet.validation import host_array


def _import(name: str) -> Any:
    """scikit-learn is an optional integration dependency, imported only with the estimators
    (``import fastnet`` does not import this module until an estimator is used)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_base, _validation = _import("sklearn.base"), _import("sklearn.utils.validation")
_multiclass, _exceptions = _import("sklearn.utils.multiclass"), _import("sklearn.exceptions")
HAVE_SKLEARN = None not in (_base, _validation, _multiclass, _exceptions)


class _StandaloneEstimator:
    """Without scikit-learn: the parameter contract (``get_params``/``set_params``) only."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        names = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in names if name != "self"}

    def set_params(self, **params: Any) -> Any:
        for key, value in params.items():
            if key not in self.get_params():
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}")
            setattr(self, key, value)
        return self


class _StandaloneClassifier:
    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy (scikit-learn's ``ClassifierMixin.score``: of whole rows for
        multi-label)."""
        y = _column(host_array(y, "y"))
        hits = self.predict(X) == y  # type: ignore[attr-defined]
        return float(
            np.average(hits.all(axis=1) if hits.ndim == 2 else hits, weights=sample_weight)
        )


class _StandaloneRegressor:
    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """R^2 (scikit-learn's ``RegressorMixin.score``)."""
        return _r2(host_array(y, "y"), self.predict(X), sample_weight)  # type: ignore[attr-defined]


def _r2(y: Any, pred: Any, sample_weight: Any = None) -> float:
    """Coefficient of determination, averaged over outputs (scikit-learn's ``r2_score``: 1
    for a perfect fit of constant targets, 0 for an imperfect one), rows weighted by
    ``sample_weight``."""
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    pred = np.asarray(pred, np.float64).reshape(y.shape)
    w = np.ones(len(y)) if sample_weight is None else host_array(sample_weight, "sample_weight")
    if w.shape != (len(y),) or not np.isfinite(w).all() or (w < 0).any() or not w.any():
        raise ValueError(f"sample_weight must hold {len(y)} finite weights >= 0, not all zero")
    w = w.astype(np.float64).reshape(-1, 1)
    residual = (w * (y - pred) ** 2).sum(axis=0)
    total = (w * (y - np.average(y, axis=0, weights=w[:, 0])) ** 2).sum(axis=0)
    r2 = np.where(total > 0, 1 - residual / np.where(total > 0, total, 1), residual == 0)
    return float(np.mean(r2))


if HAVE_SKLEARN:
    BaseEstimator: Any = _base.BaseEstimator
    ClassifierMixin: Any = _base.ClassifierMixin
    RegressorMixin: Any = _base.RegressorMixin
    NotFittedError: Any = _exceptions.NotFittedError
    ConvergenceWarning: Any = _exceptions.ConvergenceWarning
else:
    BaseEstimator, ClassifierMixin, RegressorMixin = (
        _StandaloneEstimator,
        _StandaloneClassifier,
        _StandaloneRegressor,
    )

    class NotFittedError(ValueError, AttributeError):  # type: ignore[no-redef]
        """The estimator is used before ``fit``."""

    class ConvergenceWarning(UserWarning):  # type: ignore[no-redef]
        """``max_iter`` epochs ran before the loss stopped improving."""


#: scikit-learn's activation names (and fastnet's) -> fastnet's
ACTIVATIONS = {
    "relu": "relu",
    "logistic": "sigmoid",
    "tanh": "tanh",
    "identity": None,
    "sigmoid": "sigmoid",
    "leaky_relu": "leaky_relu",
}
_RANGES = (  # name, low, high, low included
    ("learning_rate_init", 0, np.inf, False),
    ("alpha", 0, np.inf, True),
    ("momentum", 0, 1, True),
    ("beta_1", 0, 1, True),
    ("beta_2", 0, 1, True),
    ("epsilon", 0, np.inf, False),
    ("power_t", 0, np.inf, True),
    ("tol", 0, np.inf, True),
)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    """An integer >= 0 (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= 0)


def _check_weights(sample_weight: Any, n: int) -> np.ndarray:
    w = host_array(sample_weight, "sample_weight")
    w = np.full(n, w) if w.ndim == 0 and w.dtype.kind in "iuf" else w  # (one for all rows)
    if w.dtype.kind not in "biuf" or w.shape != (n,):
        raise ValueError(
            f"sample_weight must hold {n} numbers (one per row), got {w.dtype} {w.shape}"
        )
    w = w.astype(np.float64)
    if not np.isfinite(w).all() or (w < 0).any() or not w.any():
        raise ValueError("sample_weight must be finite, non-negative and not all zero")
    return w


def _column(y: np.ndarray) -> np.ndarray:
    return y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y


#: the most a sparse X may take once dense (its rows times columns)
SPARSE_DENSE_LIMIT = 2**30


def _dense(X: Any) -> Any:
    """A sparse X as a dense array (the model's layers take dense ones), refused where that
    would take more than ``SPARSE_DENSE_LIMIT`` bytes; others as they are."""
    if not hasattr(X, "toarray"):
        return X
    size = X.shape[0] * X.shape[1] * X.dtype.itemsize
    if size > SPARSE_DENSE_LIMIT:
        raise ValueError(
            f"sparse X of shape {X.shape} would take {size / 2**30:.1f} GiB dense (the model "
            f"takes dense arrays; limit {SPARSE_DENSE_LIMIT / 2**30:g} GiB): reduce its columns "
            "(OneHotEncoder(max_categories=...), TruncatedSVD) or pass X.toarray() yourself"
        )
    return X.toarray()


def _wide(y: Any) -> bool:
    """Whether ``y`` has several columns (a classifier's multi-label indicator matrix)."""
    shape = tuple(getattr(y, "shape", None) or np.asarray(y).shape)
    return len(shape) == 2 and shape[1] > 1


def _standalone_checks(est: Any, X: Any, y: Any, reset: bool, dtype: Any) -> tuple[Any, Any]:
    """What scikit-learn's ``validate_data`` does, for use without it."""
    names = getattr(X, "columns", None)
    X = host_array(X, "X")
    if X.ndim != 2:
        raise ValueError(f"Expected 2D array, got {X.ndim}D array instead (reshape your data)")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"X must hold real numbers, got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=dtype)
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X is empty: shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("Input X contains NaN or infinity")
    names = names if names is not None and all(isinstance(n, str) for n in names) else None
    if reset:  # (scikit-learn keeps names only where they are all strings)
        est.n_features_in_ = X.shape[1]
        est.__dict__.pop("feature_names_in_", None)
        if names is not None:
            est.feature_names_in_ = np.asarray(names, dtype=object)
    elif X.shape[1] != est.n_features_in_:
        raise ValueError(
            f"X has {X.shape[1]} features, but {type(est).__name__} is expecting "
            f"{est.n_features_in_} features as input"
        )
    else:
        fitted = getattr(est, "feature_names_in_", None)
        given = None if names is None else list(names)
        if fitted is not None and given is not None and given != list(fitted):
            raise ValueError(  # (scikit-learn's check: a frame's columns by name)
                f"The feature names should match those that were passed during fit: fit had "
                f"{list(fitted)[:8]}, X has {given[:8]}"
            )
        if (fitted is None) != (given is None):  # (scikit-learn warns alike)
            warnings.warn(
                f"X {'has' if given else 'does not have'} feature names, but "
                f"{type(est).__name__} was fitted {'without' if given else 'with'} them",
                UserWarning,
                stacklevel=4,
            )
    if y is not None:
        y = host_array(y, "y")
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} samples but y has {len(y)}")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("Input y contains NaN or infinity")
    return X, y


def _split(n: int, fraction: float, seed: int | None, labels: Any = None) -> tuple:
    """Random (train, validation) rows, as many as scikit-learn's ``train_test_split`` draws
    (not the same rows: another random stream): ``ceil(n * fraction)`` held out (2 or more),
    stratified by ``labels`` when given (each class's share by largest remainder, ties drawn
    at random); its errors for too few rows."""
    n_val, rng = int(np.ceil(n * fraction)), np.random.default_rng(seed)
    if n_val >= n:
        raise ValueError(
            f"With n_samples={n} and validation_fraction={fraction}, the resulting train set "
            "will be empty"
        )
    order, held = rng.permutation(n), np.arange(n) < n_val
    if labels is not None:
        _, label, counts = np.unique(labels[order], return_inverse=True, return_counts=True)
        if counts.min() < 2:
            raise ValueError(
                "early_stopping's validation split is stratified: each class needs 2 rows or "
                f"more (the fewest has {counts.min()})"
            )
        if min(n_val, n - n_val) < len(counts):
            raise ValueError(
                "early_stopping's validation split is stratified: the train and validation "
                f"sets need one row of each class ({len(counts)}), got {n - n_val} and {n_val} "
                "rows (a larger validation_fraction, or more rows)"
            )
        share = counts * n_val / n
        per_class = np.floor(share).astype(int)
        ranked = np.lexsort((rng.random(len(counts)), per_class - share))
        per_class[ranked[: n_val - per_class.sum()]] += 1
        starts = np.repeat(counts.cumsum() - counts, counts)
        rank = np.empty(n, int)  # each row's place among its class's rows in ``order``
        rank[np.argsort(label, kind="stable")] = np.arange(n) - starts
        held = rank < per_class[label]
    if n_val < 2:
        raise ValueError(
            "The validation set is too small. Increase 'validation_fraction' or the size of "
            "your dataset."
        )
    return order[~held], order[held]


def _log_proba(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities in float64 from logits: log softmax, or for one sigmoid output
    ``[log(1 - p), log p] = -logaddexp(0, [z, -z])``."""
    z = logits.astype(np.float64)
    if z.shape[1] == 1:
        return -np.logaddexp(0, np.hstack([z, -z]))
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _proba(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits: softmax, or ``[1 - p, p]`` for one sigmoid output."""
    proba = np.exp(_log_proba(logits))
    if logits.shape[1] == 1:
        proba[:, 0] = 1 - proba[:, 1]
    return proba


class _ValidationScore(Callback):
    """Puts the estimator's score on held-out data (rows weighted by ``w``, as scikit-learn
    scores them) into the epoch logs as ``val_score``."""

    provides = ("val_score",)

    def __init__(self, estimator: Any, X: Any, y: Any, w: Any) -> None:
        self.estimator, self.X, self.y = estimator, X, y
        self.w = w if w is not None and np.any(w) else None  # (held-out rows all of weight 0)

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        logs["val_score"] = self.estimator._score_model(model, self.X, self.y, self.w)
        return False


class _Objective(Callback):
    """scikit-learn's ``loss_`` into the epoch logs as ``objective``: the model's loss (per
    output with ``per_output``: MLPRegressor's half mean square) plus the L2 penalty ``0.5 *
    alpha * ||W||**2 / rows per batch`` at the epoch's first weights (exact for one batch)."""

    provides = ("objective",)

    def __init__(self, per_output: bool) -> None:
        self.per_output, self.penalty = per_output, 0.0

    def on_epoch_begin(self, model: Any, epoch: int) -> None:
        squares = sum(float((d.W.value**2).sum()) for d in model.layers if isinstance(d, Dense))
        self.penalty = 0.5 * model.optimizer.weight_decay * squares

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        loss = logs["loss"] / (model.output_dim if self.per_output else 1)
        logs["objective"] = loss + self.penalty
        return False


class _Progress(Callback):
    """scikit-learn's ``verbose`` lines: ``Iteration n, loss = ...`` (``n`` from 1 in each
    fit, warm or partial, as ``n_iter_``) and the validation score."""

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        print(f"Iteration {epoch + 1}, loss = {logs['objective']:.8f}")
        if "val_score" in logs:
            print(f"Validation score: {logs['val_score']:f}")
        return False


class _BestScore(EarlyStopping):
    """scikit-learn's early stopping keeps the best score's weights (any gain, as
    ``_best_coefs``); ``_NoImprovement`` stops (its patience is never reached)."""

    def on_train_begin(self, model: Any) -> None:
        super().on_train_begin(model)
        self.top = -np.inf

    def _is_best(self, logs: dict[str, float], improved: bool) -> bool:
        if logs["val_score"] > self.top:
            self.top = logs["val_score"]
            return True
        return False


class _NoImprovement(Callback):
    """scikit-learn's ``_no_improvement_count``: an epoch whose ``objective`` is not ``tol``
    below the best so far (with ``validation``: whose ``val_score`` is not ``tol`` above it)
    counts; more than ``patience`` in a row stop training or, ``adaptive``, divide the lr by 5
    (stopping once it is 1e-6 or below). The estimator keeps it until a cold fit."""

    count, best = 0, np.inf

    def using(
        self, patience: int, tol: float, adaptive: bool, validation: bool, verbose: bool = False
    ) -> _NoImprovement:
        self.patience, self.tol, self.verbose = patience, tol, verbose
        self.adaptive, self.validation = adaptive, validation
        return self

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        value = -logs["val_score"] if self.validation else logs["objective"]
        self.count = self.count + 1 if value > self.best - self.tol else 0
        self.best = min(self.best, value)
        if self.count <= self.patience:
            return False
        what = "Validation score" if self.validation else "Training loss"
        said = f"{what} did not improve more than tol={self.tol:f} for {self.patience} "
        if self.adaptive and model.optimizer.lr > 1e-6:
            model.optimizer.set_scheduled_lr(model.optimizer.lr / 5)
            self.count = 0
            lr = f"Setting learning rate to {model.optimizer.lr:f}"
            print(f"{said}consecutive epochs. {lr}") if self.verbose else None
            return False
        small = " Learning rate too small." if self.adaptive else ""
        print(f"{said}consecutive epochs.{small} Stopping.") if self.verbose else None
        return True


class _MLPBase(BaseEstimator):
    """Shared by ``MLPClassifier`` and ``MLPRegressor``."""

    _loss = "softmax_cross_entropy"
    model_: Sequential
    loss_curve_: list[float]
    t_: int
    validation_scores_: list[float] | None

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (256, 128),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: int | str = "auto",
        learning_rate_init: float = 0.001,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: int | None = None,
        tol: float = 1e-4,
        verbose: int = 0,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        learning_rate: str = "constant",
        power_t: float = 0.5,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        dropout: float = 0.0,
        batch_norm: bool = False,
        backend: str | None = None,
        dtype: str = "float32",
        precision: str = "fp32",
    ) -> None:
        for name, value in locals().items():  # scikit-learn: store parameters as given
            if name != "self":
                setattr(self, name, value)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        tags.input_tags.sparse = True  # (made dense: the model's layers take dense arrays)
        return tags

    # ------------------------------------------------------------------ validation
    def _validate(
        self, X: Any, y: Any = None, reset: bool = True, fitting: bool = False
    ) -> tuple[Any, Any]:
        dtype = np.dtype("float32" if str(self.dtype).startswith("mixed") else self.dtype)
        if fitting and y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None"
            )
        X, y = unmasked(X, "X"), None if y is None else unmasked(y, "y")
        if not HAVE_SKLEARN:
            return _standalone_checks(self, X, y, reset, dtype)
        sparse = ("csr", "csc", "coo")  # (a ColumnTransformer's one-hot columns: made dense)
        if y is None:
            X = _validation.validate_data(self, X, reset=reset, dtype=dtype, accept_sparse=sparse)
        else:
            X, y = _validation.validate_data(
                self,
                X,
                y,
                reset=reset,
                dtype=dtype,
                accept_sparse=sparse,
                multi_output=self._multi_output_y() or _wide(y),
                y_numeric=self._multi_output_y(),
            )
        return _dense(X), y

    def _multi_output_y(self) -> bool:
        return False

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet; call 'fit' first"
            )

    def _batch(self, n: int, held_out: str = "") -> int:
        size = self.batch_size
        if size != "auto" and (
            isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1
        ):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {size!r}")
        batch = max(1, min(200, n)) if size == "auto" else int(min(size, n))
        if self.batch_norm and batch < 2:
            raise ValueError(
                f"batch_norm=True normalizes over a batch's rows: training needs at least 2 "
                f"per batch, got n_samples={n}{held_out} with batch_size={size!r}"
            )
        return batch

    # ------------------------------------------------------------------ building
    def _check_params(self) -> None:
        """Hyperparameters checked under the estimator's names (not the optimizer's)."""
        for name, low, high, low_ok in _RANGES:
            value = getattr(self, name)
            if not (
                _is_real(value)
                and (low < value or (low_ok and value == low))
                and value <= high
                and np.isfinite(value)
            ):
                span = f"{'>=' if low_ok else '>'} {low:g}"
                span = f"in [{low:g}, {high:g}]" if high < np.inf else span
                raise ValueError(f"{name} must be a finite number {span}, got {value!r}")
        if self.beta_1 == 1 or self.beta_2 == 1:
            raise ValueError("beta_1 and beta_2 must be below 1")
        if not (_is_count(self.n_iter_no_change) or self.n_iter_no_change == np.inf):
            raise ValueError(
                f"n_iter_no_change must be an integer >= 0 or numpy.inf (never stop), got "
                f"{self.n_iter_no_change!r}"
            )
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping", "batch_norm"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):  # ("False" is true)
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not (isinstance(self.verbose, (bool, np.bool_)) or _is_count(self.verbose)):
            raise ValueError(f"verbose must be a bool or an integer >= 0, got {self.verbose!r}")
        state = self.random_state
        if not (state is None or isinstance(state, np.random.RandomState) or _is_count(state)):
            raise ValueError(
                f"random_state must be None, an integer >= 0 or a numpy RandomState, got {state!r}"
            )
        for name, allowed in (
            ("solver", OPTIMIZERS.builtin()),  # fastnet's every rule, by its name
            ("activation", ACTIVATIONS),
            ("learning_rate", ("constant", "invscaling", "adaptive")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not supported by "
                    f"{type(self).__name__}; use one of {', '.join(allowed)}"
                )

    def _seed(self) -> int | None:
        """``random_state`` as a seed: None or an int as given; a ``RandomState`` draws one
        (a new one each fit, as scikit-learn's ``check_random_state`` makes it)."""
        state = self.random_state
        if isinstance(state, np.random.RandomState):
            return int(state.randint(np.iinfo(np.int32).max))
        return state

    def _build(self, fitted: dict, rows_per_batch: float, seed: int | None) -> Sequential:
        """``rows_per_batch``: the batch's summed sample weight, scikit-learn's divisor of the
        L2 term ``alpha * W``."""
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if isinstance(sizes, (int, np.integer)) else tuple(sizes)
        if not all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {sizes!r}")
        return mlp(
            None,
            sizes,
            fitted["n_outputs_"],
            ACTIVATIONS[self.activation],
            dropout=self.dropout,
            batch_norm=self.batch_norm,
            loss=self._model_loss(fitted),
            optimizer=self._optimizer(self.alpha / rows_per_batch),
            backend=self.backend,
            dtype=self.dtype,
            seed=seed,
            precision=self.precision,
        )

    def _optimizer(self, weight_decay: float) -> Optimizer:
        lr = self.learning_rate_init
        if self.solver == "sgd" and self.momentum > 0:
            return Momentum(lr, self.momentum, self.nesterovs_momentum, weight_decay)
        if self.solver in ("adam", "adamw"):
            cls = Adam if self.solver == "adam" else AdamW
            return cls(lr, self.beta_1, self.beta_2, self.epsilon, weight_decay, eps_hat=True)
        kwargs = {"momentum": self.momentum} if self.solver in ("momentum", "nesterov") else {}
        return get_optimizer(self.solver, lr=lr, weight_decay=weight_decay, **kwargs)

    def _callbacks(
        self, n: int, epochs: int, validation: Any, seen: int, incremental: bool
    ) -> list[Callback]:
        """Validation score, stopping rules and scikit-learn's ``learning_rate`` schedules
        (``invscaling``: lr / (rows seen + 1) ** power_t, ``seen`` before this call, a fit's
        new optimizer at lr for its first epoch; ``adaptive``: ``_NoImprovement``'s), which
        apply to ``solver="sgd"``; ``n_iter_no_change=0`` never stops nor lowers the lr."""
        per_output = getattr(self, "loss", None) == "squared_error"  # (MLPRegressor's)
        callbacks: list[Callback] = [_Objective(per_output)]
        if validation is not None:
            callbacks.append(_ValidationScore(self, *validation))
        schedule = self.learning_rate if self.solver == "sgd" else "constant"
        if schedule == "invscaling":
            lr0, power = self.learning_rate_init, self.power_t

            def invscaling(e: int) -> float:
                return lr0 / (seen + e * n + 1) ** power if e or incremental else lr0

            callbacks.append(LearningRateScheduler(invscaling))
        if self.verbose:  # (scikit-learn's lines; its stopping rule's below)
            callbacks.append(_Progress())
        if validation is not None:
            callbacks.append(_BestScore("val_score", int(epochs) + 1, mode="max"))
        if self.n_iter_no_change and self.n_iter_no_change != np.inf:  # (inf: never, as 0)
            stall = self._no_improvement.using(
                self.n_iter_no_change,
                self.tol,
                schedule == "adaptive",
                validation is not None,
                bool(self.verbose),
            )
            callbacks.append(stall)
        return callbacks

    def _train(
        self,
        model: Sequential,
        X: Any,
        t: Any,
        epochs: int,
        batch: int,
        validation: Any,
        sample_weight: Any,
        seen: int,
        incremental: bool,
    ) -> dict[str, list[float]]:
        kept, model.metadata = model.metadata, {}  # (labels encoded here: no class names)
        before = len(model.history.get("loss", ()))  # (every entry holds every epoch)
        try:
            return model.fit(
                X,
                t,
                epochs=epochs,
                batch_size=batch,
                shuffle=self.shuffle,
                callbacks=self._callbacks(len(X), epochs, validation, seen, incremental),
                verbose=0,  # (scikit-learn's lines: _Progress)
                compiled="auto",
                sample_weight=sample_weight,
            )
        except KeyboardInterrupt:  # scikit-learn's: the finished epochs kept, with a warning
            done = {key: list(v[before:]) for key, v in model.history.items()}
            if not done.get("loss"):
                raise
            warnings.warn("Training interrupted by user.", stacklevel=5)
            return done
        finally:
            model.metadata = kept

    def _fit(self, *args: Any, **kwargs: Any) -> Any:
        """``_fit_checked``; rejected input (or Ctrl-C before an epoch ends) changes nothing."""
        if getattr(getattr(self, "model_", None), "_in_fit", False):  # (before partial_fit's
            raise RuntimeError(  # alpha reaches the running fit's optimizer)
                f"this {type(self).__name__} is in fit (another thread's): one fit at a time"
            )
        keys = ("n_features_in_", "feature_names_in_", "_no_improvement")
        saved = {k: copy.deepcopy(v) for k, v in vars(self).items() if k in keys}
        try:
            maxed = self._fit_checked(*args, **kwargs)
        except BaseException:
            for key in keys:
                if key in saved:
                    setattr(self, key, saved[key])
                else:
                    self.__dict__.pop(key, None)
            raise
        if maxed:  # (after the fit is whole: as an error, -W error, it leaves it consistent)
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({maxed}) reached and the "
                "optimization hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return self

    def _fit_checked(
        self,
        X: Any,
        y: Any,
        epochs: int,
        incremental: bool,
        extra: Any = None,
        sample_weight: Any = None,
    ) -> int:
        """A fit or partial_fit; returns ``epochs`` where it ran them all without
        converging (``_fit`` then warns), else 0."""
        continuing = hasattr(self, "model_") and (incremental or self.warm_start)
        self._check_params()
        X, y = self._validate(X, y, reset=not continuing, fitting=True)
        if not (isinstance(epochs, (int, np.integer)) and epochs > 0):
            raise ValueError(f"max_iter must be a positive integer, got {epochs!r}")
        targets, fitted = self._targets(y, continuing, extra)  # checks; changes nothing
        classes = getattr(self, "classes_", None) if continuing and not incremental else None
        given = np.unique(y) if classes is not None and np.ndim(y) == 1 else None
        if given is not None and classes is not None and len(given) != len(classes):
            raise ValueError(  # (scikit-learn's; labels outside them: _targets refused them)
                "warm_start can only be used where `y` has the same classes as in the previous "
                f"call to fit. Previously got {classes}, `y` has {given}"
            )
        weights = None if sample_weight is None else _check_weights(sample_weight, len(X))
        validation, seed = None, self._seed()  # (drawn from a RandomState once data passed)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if self.early_stopping:
            X, targets, weights, validation = self._hold_out(
                X, targets, weights, seed, fitted["n_outputs_"]
            )
        batch = self._batch(len(X), " after early_stopping's validation split" * bool(validation))
        # scikit-learn divides by the summed weights: rows weigh w / mean(w) in fit's mean (its
        # mini-batches by their own sums: equal for one batch or equal weights in whole ones)
        mean_weight = 1.0 if weights is None else float(weights.mean())
        if weights is not None:
            weights = weights / mean_weight
        if fitted.get("out_activation_") == "logistic" and fitted["n_outputs_"] > 1:
            # multi-label: scikit-learn's log-loss sums over the outputs (fastnet's means)
            ones = np.ones(len(X)) if weights is None else weights
            weights = ones * fitted["n_outputs_"]
        model = self._model_for(continuing, incremental, fitted, batch * mean_weight, seed)
        seen = getattr(self, "t_", 0) if continuing else 0  # rows seen since a cold fit
        if not (continuing and hasattr(self, "_no_improvement")):  # and its stopping count
            self._no_improvement = _NoImprovement()
        history = self._train(
            model, X, targets, epochs, batch, validation, weights, seen, incremental
        )
        if not history["loss"] or model.diverged:  # (scikit-learn's error for non-finite weights)
            hint = "; exp(outputs) overflows float32 past 88: dtype='float64'"
            raise ValueError(
                f"{type(self).__name__} diverged: {model.stop_reason}. The inputs may hold "
                "large values and need scaling (StandardScaler), or learning_rate_init is too high"
                + (hint if getattr(self, "loss", None) == "poisson" else "")
            )
        self._record(model, fitted, history, continuing, seen + len(history["loss"]) * len(X))
        maxed = not incremental and len(history["loss"]) == epochs and not model.stop_reason
        return epochs if maxed else 0

    def _record(
        self, model: Sequential, fitted: dict, history: dict, continuing: bool, seen: int
    ) -> None:
        """The fitted attributes: ``fitted``'s, the model, curves and scores (appended to a
        previous fit's, as scikit-learn does), ``t_`` = ``seen``."""
        for key, value in fitted.items():
            setattr(self, key, value)
        self.model_ = model
        model.metadata = self._metadata()
        before = list(self.loss_curve_) if continuing else []
        self.loss_curve_ = before + list(history["objective"])
        scores = list(self.validation_scores_ or []) if continuing else []
        self.validation_scores_ = scores + history.get("val_score", []) or None
        best_score = max(self.validation_scores_) if self.validation_scores_ else None
        self.best_validation_score_ = best_score  # and best_loss_ None, as scikit-learn's
        self.best_loss_ = None if best_score is not None else min(self.loss_curve_)
        self.n_iter_ = len(history["objective"])  # (this call's epochs, as scikit-learn's)
        self.loss_ = self.loss_curve_[-1]  # (the last epoch's, as scikit-learn's)
        self.history_, self.t_ = history, seen

    def _metadata(self) -> dict:
        """What the model's checkpoints and ONNX export keep of the data (as the CLI's): the
        task, the feature names, the class labels (where plain values, sorted and unique)."""
        known = getattr(self, "classes_", None)  # (a classifier's, set before)
        meta: dict[str, Any] = {"task": "regression" if known is None else "classification"}
        if hasattr(self, "feature_names_in_"):
            meta["features"] = [str(f) for f in self.feature_names_in_]
        classes = [] if known is None else known.tolist()
        kinds = {type(c) for c in classes}
        plain = any(kinds <= k for k in ({str}, {bool}, {int, float}))
        if classes and plain and classes == sorted(set(classes)):
            meta["classes"] = classes
        return meta

    def _model_for(
        self, continuing: bool, incremental: bool, fitted: dict, rows: float, seed: int | None
    ) -> Sequential:
        """The model a fit trains: ``warm_start``'s of the current hyperparameters, the
        fitted one for ``partial_fit`` (alpha over this call's batch weight ``rows``, as
        scikit-learn's), else a new one."""
        if continuing and not incremental:
            return self._rebuilt(self.model_, fitted, rows, seed)
        if not continuing:
            return self._build(fitted, rows, seed)
        model = self.model_
        if get_loss(self._model_loss(fitted)).get_config() != model.loss.get_config():
            raise ValueError(
                f"partial_fit continues the fitted {model.loss!r}, but the loss changed "
                "since (set_params): call fit to train a new model with it"
            )
        model.optimizer.weight_decay = self.alpha / rows
        return model

    def _rebuilt(
        self, fitted: Sequential, attributes: dict, rows_per_batch: float, seed: int | None
    ) -> Sequential:
        """``warm_start``: a model of the current hyperparameters with ``fitted``'s weights and
        buffers and a new optimizer (as scikit-learn makes one: a changed learning rate, alpha
        or solver counts); the network itself may not change."""
        model = self._build(attributes, rows_per_batch, seed)
        model.build(int(fitted.input_dim or 0))
        configs = [  # (the initializers drew weights that are replaced: not compared)
            [{k: v for k, v in x.get_config().items() if k != "initializer"} for x in m.layers]
            for m in (fitted, model)
        ]
        if configs[0] != configs[1]:
            raise ValueError(
                "warm_start=True continues the fitted network, but hidden_layer_sizes, "
                "activation, dropout or batch_norm changed since it was fitted; set "
                "warm_start=False to fit a new one"
            )
        state = fitted.host_state()  # (the backend may have changed)
        model.set_state({k: v for k, v in state.items() if not k.startswith(("slot/", "step/"))})
        model.history = fitted.history.copied()
        return model

    def _hold_out(
        self, X: Any, targets: Any, weights: Any, seed: int | None, outputs: int
    ) -> tuple:
        """``early_stopping``'s seeded validation split: (X, targets, weights, validation)."""
        if not 0 < self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )
        # scikit-learn 1.9 stratifies a classifier's split where it has one output (binary)
        labels = targets if isinstance(self, ClassifierMixin) and outputs == 1 else None
        train, val = _split(len(X), self.validation_fraction, seed, labels)
        kept = (None, None) if weights is None else (weights[train], weights[val])
        return X[train], targets[train], kept[0], (X[val], targets[val], kept[1])

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        """Train for up to ``max_iter`` epochs (fewer when the loss stops improving by ``tol``
        for ``n_iter_no_change`` epochs); returns self. ``sample_weight`` weights each row's
        loss. Rejected input changes nothing."""
        return self._fit(X, y, self.max_iter, incremental=False, sample_weight=sample_weight)

    # ------------------------------------------------------------------ fitted attributes
    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weight matrices of the Dense layers, as scikit-learn's: on a CPU backend the
        model's own arrays (edits in place take effect), on a GPU host copies; assigning a
        list of arrays of their shapes sets them."""
        return self._dense_arrays("W")

    @coefs_.setter
    def coefs_(self, arrays: list) -> None:
        self._set_dense_arrays("W", arrays)

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """Bias vectors of the Dense layers (as ``coefs_``)."""
        return self._dense_arrays("b")

    @intercepts_.setter
    def intercepts_(self, arrays: list) -> None:
        self._set_dense_arrays("b", arrays)

    def _dense_arrays(self, name: str) -> list[np.ndarray]:
        self._check_fitted()
        found = []
        for layer in [x for x in self.model_.layers if isinstance(x, Dense)]:
            p = getattr(layer, name)
            live = p is not None and isinstance(p.value, np.ndarray)
            live = live and (p.group is None or p.group.compute is p.group.values)  # (not mixed)
            host = np.zeros(layer.units) if p is None else self.model_.backend.to_numpy(p.value)
            found.append(p.value if live else np.array(host, copy=True))
        return found

    def _set_dense_arrays(self, name: str, arrays: list) -> None:
        self._check_fitted()
        dense = [x for x in self.model_.layers if isinstance(x, Dense)]
        if not isinstance(arrays, (list, tuple)) or len(arrays) != len(dense):
            raise ValueError(f"{name} arrays: a list of {len(dense)} arrays, one per layer")
        params = [getattr(layer, name) for layer in dense]
        new = [np.asarray(a) for a in arrays]
        for i, (p, a) in enumerate(zip(params, new)):  # all checked before any is written
            if a.shape != tuple(p.value.shape) or a.dtype.kind not in "biuf":
                raise ValueError(
                    f"{name} array {i}: real numbers of shape {tuple(p.value.shape)}, got "
                    f"{a.dtype} {a.shape}"
                )
            if not np.isfinite(a).all():
                raise ValueError(f"{name} array {i} holds NaN or inf")
        for p, a in zip(params, new):
            p.value = self.model_.backend.asarray(a.astype(p.value.dtype))

    @property
    def n_layers_(self) -> int:
        """Layers counted as scikit-learn counts them: input, hidden and output."""
        self._check_fitted()
        return sum(isinstance(layer, Dense) for layer in self.model_.layers) + 1

    def _raw(self, X: Any) -> np.ndarray:
        self._check_fitted()
        X, _ = self._validate(X, reset=False)
        return self.model_.predict_raw(X)

    # subclass hooks
    def _targets(self, y: Any, continuing: bool, extra: Any) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def _model_loss(self, fitted: dict) -> Any:
        return self._loss

    def _score_model(self, model: Sequential, X: Any, y: Any, w: Any = None) -> float:
        raise NotImplementedError


class MLPClassifier(ClassifierMixin, _MLPBase):
    """Multi-layer perceptron classifier with scikit-learn's interface: softmax cross-entropy,
    or for two classes one sigmoid output and the binary log-loss (``out_activation_``), or
    for a multi-label indicator matrix ``y`` (0/1 columns) one sigmoid output per column.

    Labels may be any sortable values (strings, pandas categoricals, nullable integers); they
    are mapped to ``classes_``. ``partial_fit`` trains one epoch (pass ``classes`` first).
    """

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _targets(self, y: Any, continuing: bool, classes: Any) -> tuple[np.ndarray, dict]:
        y = _column(np.asarray(y.toarray() if hasattr(y, "toarray") else y))  # (sparse y)
        if y.ndim == 2:
            return self._multilabel(y, continuing, classes)
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D class labels, got shape {y.shape}")
        if continuing and self._is_multilabel():
            raise ValueError(f"y must be a multi-label matrix of {self.n_outputs_} columns")
        if HAVE_SKLEARN:
            _multiclass.check_classification_targets(y)
        elif y.dtype.kind == "f" and not np.all(y == np.round(y)):
            raise ValueError("Unknown label type: continuous targets for a classifier")
        given = None if classes is None else np.unique(np.asarray(classes))
        if continuing and given is not None and not np.array_equal(given, self.classes_):
            raise ValueError(
                f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                f"was: {self.classes_!r}"
            )
        known = self.classes_ if continuing else np.unique(y) if given is None else given
        if len(known) < 2:
            raise ValueError(f"y has only one class ({known[0]!r}); a classifier needs 2 or more")
        unknown = np.setdiff1d(np.unique(y), known)
        if unknown.size:
            raise ValueError(
                f"y contains labels {unknown[:5].tolist()} not in classes {known[:10].tolist()}"
            )
        binary = len(known) == 2  # scikit-learn's one logistic output, else softmax
        fitted = {"classes_": known, "n_outputs_": 1 if binary else len(known)}
        out = "logistic" if binary else "softmax"
        return np.searchsorted(known, y), {**fitted, "out_activation_": out}

    def _multilabel(self, y: np.ndarray, continuing: bool, classes: Any) -> tuple[np.ndarray, dict]:
        """A multi-label indicator matrix (scikit-learn's ``type_of_target``
        "multilabel-indicator"): classes ``0..k-1`` (``partial_fit``'s ``classes`` too), one
        logistic output each."""
        if classes is not None and not np.array_equal(np.unique(classes), np.arange(y.shape[1])):
            raise ValueError(
                f"classes={classes!r}: a multi-label y's classes are its columns "
                f"0..{y.shape[1] - 1}"
            )
        if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
            raise ValueError(
                f"a 2-D y must be a multi-label indicator matrix of 0s and 1s, got shape "
                f"{y.shape} and dtype {y.dtype} (class labels go as one column)"
            )
        if continuing and not (self._is_multilabel() and y.shape[1] == self.n_outputs_):
            raise ValueError(
                f"y has {y.shape[1]} label columns; the model was fit with "
                + (f"{self.n_outputs_}" if self._is_multilabel() else "class labels")
            )
        fitted = {"classes_": np.arange(y.shape[1]), "n_outputs_": y.shape[1]}
        return y.astype(np.float64), {**fitted, "out_activation_": "logistic"}

    def _is_multilabel(self) -> bool:
        return getattr(self, "out_activation_", "") == "logistic" and self.n_outputs_ > 1

    def _model_loss(self, fitted: dict) -> Any:
        logistic = fitted["out_activation_"] == "logistic"
        return "sigmoid_binary_cross_entropy" if logistic else self._loss

    def _score_model(self, model: Sequential, X: Any, t: Any, w: Any = None) -> float:
        raw = model.predict_raw(X)
        if t.ndim == 2:  # multi-label: every label right (scikit-learn's subset accuracy)
            return float(np.average(((raw > 0) == (t > 0.5)).all(axis=1), weights=w))
        hits = _proba(raw).argmax(axis=1) == t  # t: indices
        return float(np.average(hits, weights=w))

    def partial_fit(
        self, X: Any, y: Any, sample_weight: Any = None, classes: Any = None
    ) -> MLPClassifier:
        """One epoch on ``(X, y)`` (rows weighted as in ``fit``); the first call needs
        ``classes`` (all labels to expect)."""
        if not hasattr(self, "model_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        return self._fit(X, y, 1, True, extra=classes, sample_weight=sample_weight)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities in float64 (scikit-learn's): ``[1 - p, p]`` for two classes,
        each label's p for multi-label."""
        raw = self._raw(X)
        return (
            np.exp(-np.logaddexp(0, -raw.astype(np.float64)))
            if self._is_multilabel()
            else _proba(raw)
        )

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of ``predict_proba``, computed stably from the logits."""
        raw = self._raw(X)
        return (
            -np.logaddexp(0, -raw.astype(np.float64)) if self._is_multilabel() else _log_proba(raw)
        )

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class; for two, ``classes_[1]`` where p > 0.5 (scikit-learn's);
        for multi-label, a 0/1 row of the labels with p > 0.5."""
        if self._is_multilabel():
            return (self._raw(X) > 0).astype(np.int64)
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]


class MLPRegressor(RegressorMixin, _MLPBase):
    """Multi-layer perceptron regressor, one or several outputs. ``loss`` (keyword, as
    scikit-learn's): "squared_error" (half the squares, identity outputs) or "poisson" (half
    the Poisson deviance of counts or rates >= 0, predictions ``exp`` of the outputs)."""

    loss = "squared_error"  # (for pickles of before it was a parameter)

    def __init__(self, *args: Any, loss: str = "squared_error", **params: Any) -> None:
        super().__init__(*args, **params)
        self.loss = loss

    def _check_params(self) -> None:
        super()._check_params()
        if self.loss not in ("squared_error", "poisson"):
            raise ValueError(
                f"loss={self.loss!r} is not supported by MLPRegressor; use one of "
                "squared_error, poisson"
            )

    def _model_loss(self, fitted: dict) -> Any:
        """scikit-learn's: half the squares (or the Poisson deviance) summed over the
        outputs, mean over the rows."""
        if self.loss == "poisson":
            return Poisson(scale=fitted["n_outputs_"])
        return MeanSquaredError(scale=fitted["n_outputs_"] / 2)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.positive_only = self.loss == "poisson"
        return tags

    def _multi_output_y(self) -> bool:
        return True

    def _targets(self, y: Any, continuing: bool, extra: Any) -> tuple[np.ndarray, dict]:
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            raise ValueError(f"y must hold real numbers for a regressor, got dtype {y.dtype}")
        y = y.astype("float32" if str(self.dtype).startswith("mixed") else self.dtype)
        t = y.reshape(-1, 1) if y.ndim == 1 else y
        if t.ndim != 2:
            raise ValueError(f"y must be 1-D or 2-D, got shape {y.shape}")
        if continuing and t.shape[1] != self.n_outputs_:
            raise ValueError(
                f"y has {t.shape[1]} outputs; the model was fit with {self.n_outputs_}"
            )
        if self.loss == "poisson" and bool((t < 0).any()):
            raise ValueError("y must be counts or rates >= 0 for loss='poisson'")
        out = "exp" if self.loss == "poisson" else "identity"
        return t, {"n_outputs_": t.shape[1], "out_activation_": out}

    def _score_model(self, model: Sequential, X: Any, y: Any, w: Any = None) -> float:
        return _r2(y, model.predict_proba(X), w)  # (the loss's predictions: exp for poisson)

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch on ``(X, y)`` (rows weighted as in ``fit``)."""
        return self._fit(X, y, 1, incremental=True, sample_weight=sample_weight)

    def predict(self, X: Any) -> np.ndarray:
        self._check_fitted()
        X, _ = self._validate(X, reset=False)
        raw = self.model_.predict_proba(X).astype(np.float64)  # (float64, as scikit-learn's)
        return raw[:, 0] if raw.shape[1] == 1 else raw  # also for a (n, 1) y, as scikit-learn


# scikit-learn reads an estimator's parameters from the signature of its __init__
MLPRegressor.__init__.__signature__ = inspect.signature(_MLPBase.__init__).replace(  # type: ignore[attr-defined]
    parameters=[
        *inspect.signature(_MLPBase.__init__).parameters.values(),
        inspect.Parameter("loss", inspect.Parameter.KEYWORD_ONLY, default="squared_error"),
    ]
)

__all__ = ["HAVE_SKLEARN", "ConvergenceWarning", "MLPClassifier", "MLPRegressor", "NotFittedError"]

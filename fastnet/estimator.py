"""``MLPClassifier``: a scikit-learn style estimator on top of ``Sequential``."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from fastnet.callbacks import EarlyStopping
from fastnet.data import train_val_split
from fastnet.layers import BatchNorm1d, Dense, Dropout, Layer
from fastnet.model import Sequential
from fastnet.optimizers import get_optimizer
from fastnet.validation import check_positive_float, check_positive_int, host_array


class MLPClassifier:
    """Multi-layer perceptron classifier with the scikit-learn estimator interface.

    Labels may be any sortable values; they are mapped to ``classes_``. ``fit`` accepts
    ``validation_data``; with ``early_stopping=True`` and none given, ``validation_fraction``
    of the training data is held out.
    """

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (256, 128),
        activation: str = "relu",
        optimizer: str = "adam",
        learning_rate: float = 1e-3,
        batch_size: int = 128,
        epochs: int = 20,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        dropout: float = 0.0,
        batch_norm: bool = False,
        early_stopping: bool = False,
        patience: int = 3,
        validation_fraction: float = 0.1,
        backend: str | None = None,
        dtype: str = "float32",
        random_state: int | None = None,
        verbose: int = 0,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.early_stopping = early_stopping
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.backend = backend
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ sklearn protocol
    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> MLPClassifier:
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"invalid parameter {key!r} for MLPClassifier; valid: {valid}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        return f"MLPClassifier({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # ------------------------------------------------------------------ building
    def _optimizer(self):
        kwargs: dict[str, Any] = {"lr": self.learning_rate, "weight_decay": self.weight_decay}
        if self.optimizer == "momentum":
            kwargs["momentum"] = self.momentum
        return get_optimizer(self.optimizer, **kwargs)

    def _build_layers(self, n_classes: int) -> list[Layer]:
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, int):
            sizes = (sizes,)
        layers: list[Layer] = []
        for units in sizes:
            check_positive_int(units, "hidden_layer_sizes entry")
            if self.batch_norm:
                layers += [Dense(units), BatchNorm1d(), _activation_layer(self.activation)]
            else:
                layers.append(Dense(units, self.activation))
            if self.dropout:
                layers.append(Dropout(self.dropout))
        layers.append(Dense(n_classes))
        return layers

    def fit(self, X: Any, y: Any, validation_data: tuple[Any, Any] | None = None) -> MLPClassifier:
        """Train from scratch; returns self. Per-epoch history lands in ``history_``.
        Input that is rejected leaves a previously fitted estimator exactly as it was."""
        check_positive_float(self.learning_rate, "learning_rate")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.epochs, "epochs")
        y = host_array(y, "y")
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D class labels, got shape {y.shape}")
        if len(y) == 0:
            raise ValueError("y is empty")
        if y.dtype.kind not in "biufUS":
            raise TypeError(f"y has unsupported dtype {y.dtype}")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinite labels")
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"y has a single class ({classes[0]!r}); need at least 2")
        y_idx = _encode(y, classes)
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            Xv, yv = validation_data
            validation_data = (Xv, _encode(host_array(yv, "y_val"), classes))
        elif self.early_stopping:
            (X, y_idx), validation_data = train_val_split(
                host_array(X, "X"), y_idx, self.validation_fraction, seed=self.random_state
            )
        model = Sequential(
            self._build_layers(len(classes)),
            "softmax_cross_entropy",
            self._optimizer(),
            backend=self.backend,
            dtype=self.dtype,
            seed=self.random_state,
        )
        callbacks = [EarlyStopping("val_loss", self.patience)] if self.early_stopping else []
        history = model.fit(
            X,
            y_idx,
            epochs=self.epochs,
            batch_size=self.batch_size,
            validation_data=validation_data,
            callbacks=callbacks,
            verbose=self.verbose,
        )
        self.classes_, self.model_, self.history_ = classes, model, history
        self.n_features_in_ = model.input_dim
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("this MLPClassifier is not fitted yet; call fit(X, y) first")

    def predict_proba(self, X: Any) -> np.ndarray:
        self._check_fitted()
        return self.model_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        self._check_fitted()
        return self.classes_[self.model_.predict(X)]

    def score(self, X: Any, y: Any) -> float:
        """Mean accuracy on ``(X, y)``; ``y`` 1-D (a single column is accepted)."""
        y = host_array(y, "y")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D class labels, got shape {y.shape}")
        pred = self.predict(X)
        if len(y) != len(pred):
            raise ValueError(f"X has {len(pred)} samples but y has {len(y)} labels")
        return float(np.mean(pred == y))


def _encode(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Indices of ``y`` in the sorted ``classes``; unknown labels are an error."""
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError("labels contain NaN or infinite values")
    unknown = np.setdiff1d(np.unique(y), classes)
    if unknown.size:
        raise ValueError(
            f"labels {unknown[:5].tolist()} were not seen in fit "
            f"(classes_: {classes[:10].tolist()})"
        )
    return np.searchsorted(classes, y)


def _activation_layer(name: str) -> Layer:
    from fastnet.layers import LAYERS

    if name not in LAYERS or name in ("dense", "dropout", "batchnorm1d", "softmax"):
        raise ValueError(f"unknown activation {name!r}")
    return LAYERS[name]()

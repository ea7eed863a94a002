"""Losses on raw model outputs (logits): fused SoftmaxCrossEntropy, SigmoidBinaryCrossEntropy
(from logits, stable), MeanSquaredError; Poisson (on log-rates). ``loss(outputs, targets) ->
(value, doutputs)`` with the value left on the device and the gradient already divided by the
batch size (mean reduction).

``loss(...)`` checks shapes and target values (targets outside a loss's domain make it unbounded
below); ``loss.compute(...)`` skips the value checks, for data validated once at the boundary
(``fit`` does that with ``check_targets``)."""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

from fastnet.backends import Act, Backend, get_backend
from fastnet.backends.base import binary_xent_elements
from fastnet.backends.plan import LossPlan
from fastnet.registry import Registry, construct
from fastnet.validation import Checked, check_fraction, check_number, set_unpickled_state

#: loss classes by ``name`` (a subclass with a ``name`` of its own registers itself)
LOSSES = Registry("loss")


_CALL_IT = (
    "{} has no {}(): call it, loss, dout = loss_fn(outputs, targets), the notebooks' "
    "forward(x, t) and backward() in one (dout is the mean loss's gradient, as "
    "backward(dout=1) returned)"
)


class Loss:
    """Base class: ``compute`` gives the loss and its gradient. A subclass that overrides
    ``compute`` alone also trains with it (the parent's fused ``accumulate`` and captured
    ``plan`` are dropped); ``name`` in its class body registers it, for saving and loading.
    A classifier's loss subclasses ``SoftmaxCrossEntropy``/``SigmoidBinaryCrossEntropy`` or
    sets the attributes below (``predictions = "softmax"``, ...); without them it is a
    regression loss (raw outputs, regression metrics)."""

    name = "loss"
    classification = False
    #: whether ``count_correct`` gives an accuracy (softmax and sigmoid classifiers)
    counts_correct = False
    #: one class per output column (softmax): metrics such as top-k and the confusion matrix
    multiclass = False
    #: what ``predict_output`` applies: "softmax", "sigmoid", "exp" or "identity"
    predictions = "identity"

    #: the outputs' width of the model that built it (None: unknown, or ``shared`` by models
    #: of several widths)
    width: int | None = None
    shared = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        compute = cls.__dict__.get("compute")
        if callable(compute):  # (named here: fit's first step raised Python's TypeError)
            try:
                inspect.signature(compute).bind(None, None, None, None)
            except TypeError:
                raise TypeError(
                    f"{cls.__name__}.compute{inspect.signature(compute)} must take (self, "
                    "outputs, targets, weights=None): fit passes each row's weight, or None"
                ) from None
        LOSSES.register(cls)
        # A value, gradient or correct count of its own (or a mixin's) ahead of an inherited
        # fused form: that form computes its parent's, so the reference forms come back.
        mro = cls.__mro__
        for hook, overriding in (
            ("accumulate", {"compute", "count_correct"}),
            ("plan", {"compute", "count_correct", "accumulate"}),
        ):
            owner = next(i for i, c in enumerate(mro) if hook in c.__dict__)
            if any(overriding & set(c.__dict__) for c in mro[:owner]):
                setattr(cls, hook, getattr(Loss, hook))

    def __init__(self) -> None:
        self._backend: Backend | None = None

    def __setstate__(self, state: dict) -> None:
        set_unpickled_state(self, state)

    @property
    def forward(self) -> Any:  # the notebooks' SoftmaxWithLoss.forward(x, t), answered
        raise AttributeError(_CALL_IT.format(type(self).__name__, "forward"))

    @property
    def backward(self) -> Any:
        raise AttributeError(_CALL_IT.format(type(self).__name__, "backward"))

    def build(self, backend: Backend) -> None:
        if backend is not self._backend:
            self.__dict__.pop("_grads", None)  # (the old backend's arrays)
        self._backend = backend

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError(f"{type(self).__name__} is not built: call build(backend) first")
        return self._backend

    def __call__(self, outputs: Any, targets: Any, weights: Any = None) -> tuple[Any, Any]:
        """Loss value and gradient, after checking shapes and target values. ``weights``
        (one per row) weight each row; the mean stays over the rows (Keras's normalisation).
        Class indices may come as a column ``(n, 1)``, as ``evaluate`` and ``fit`` take them."""
        shape: tuple = getattr(targets, "shape", ())
        if self.multiclass and len(shape) == 2 and shape[1] == 1 and targets.dtype.kind in "biuf":
            targets = targets.reshape(-1)  # (a softmax model has 2+ outputs: not a target column)
        if self.multiclass and len(shape) in (1, 2) and targets.ndim == 1:
            targets = self._class_indices(targets)  # (whole-number floats, as fit takes them)
        _check_pair(self, outputs, targets)
        if self._backend is None and isinstance(outputs, np.ndarray):
            self.build(get_backend("numpy"))  # a loss used on its own, as in the notebooks
        xp = self._xp(targets)
        bad = self.invalid_targets(targets, xp, outputs.shape[1])
        if not bad and targets.dtype.kind == "f" and not bool(xp.isfinite(targets).all()):
            bad = "targets hold NaN or infinite values"
        if bad:
            raise ValueError(f"{type(self).__name__}: {bad}")
        if weights is not None and not hasattr(weights, "shape"):
            raise TypeError(
                f"{type(self).__name__}: weights must be an array (one per row), got a "
                f"{type(weights).__name__}"
            )
        if weights is not None and tuple(weights.shape) != (outputs.shape[0],):
            raise ValueError(
                f"{type(self).__name__}: weights of shape {tuple(weights.shape)} for "
                f"{outputs.shape[0]} rows"
            )
        if weights is not None and not bool(
            (self._xp(weights).isfinite(weights) & (weights >= 0)).all()
        ):
            raise ValueError(f"{type(self).__name__}: weights must be finite and >= 0")
        return self.compute(outputs, targets, weights)

    def _class_indices(self, targets: Any) -> Any:
        """1-D float class indices (a CSV's ``3.0``) and bools as int64, as ``fit`` takes
        them; the first row that holds no whole number named."""
        kind = getattr(targets, "dtype", np.dtype(object)).kind
        if kind == "b":
            return targets.astype(np.int64)
        if kind != "f":
            return targets
        xp = self._xp(targets)
        whole = xp.isfinite(targets) & (targets == xp.round(targets)) & (targets >= 0)
        if not bool(whole.all()):
            row = int(xp.argmin(whole))
            raise ValueError(
                f"{type(self).__name__}: 1-D targets are class indices; row {row} holds "
                f"{float(targets[row])!r}"
            )
        return targets.astype(np.int64)

    def _xp(self, a: Any) -> Any:
        backend = self._backend
        return backend.xp if backend is not None and backend.is_native(a) else np

    def compute(self, outputs: Any, targets: Any, weights: Any = None) -> tuple[Any, Any]:
        """Loss value and gradient without value checks (targets validated already)."""
        raise NotImplementedError(
            f"{type(self).__name__}.compute(outputs, targets, weights=None) -> (mean loss, "
            "d loss / d outputs) is not implemented"
        )

    def accumulate(self, outputs: Any, targets: Any, weights: Any, totals: Any) -> Any:
        """The training step's loss: adds the batch's summed loss into ``totals[0]`` and its
        correct count into ``totals[1]`` (a device array), returns the outputs' gradient (a
        fused loss's is a buffer it writes again at its next call: copy it to keep it)."""
        value, grad = self.compute(outputs, targets, weights)
        totals[0:1] += value * outputs.shape[0]
        correct = self.count_correct(outputs, targets)
        if correct is not None:
            totals[1:2] += correct
        return grad

    def grad_buffer(self, outputs: Any) -> Any:
        """The gradient buffer kept for outputs of this shape and dtype (a fused op writes
        into it, so a captured step allocates nothing)."""
        grads = self.__dict__.setdefault("_grads", {})
        key = (tuple(outputs.shape), str(outputs.dtype))
        if key not in grads:
            if len(grads) > 8:
                grads.clear()
            grads[key] = self.backend.empty(outputs.shape, outputs.dtype)
        return grads[key]

    def scratch_buffers(self) -> list:
        """Gradient buffers the loss reuses between steps (a captured graph keeps them)."""
        return list(getattr(self, "_grads", {}).values())

    def drop_buffers(self) -> None:
        """Empty the gradient buffer cache (made again as steps need them)."""
        self.__dict__.pop("_grads", None)

    def plan(self) -> LossPlan:
        """This loss as plain data for a compiled step (``fastnet.backends.plan``)."""
        return LossPlan(
            self.name,
            predictions=self.planned_predictions(),
            reason="captured steps cover the softmax and sigmoid cross-entropies and the mean "
            f"squared error, not {self.name} (array expressions)",
        )

    def planned_predictions(self) -> str:
        """``predictions`` for fused inference, or "custom" where a subclass (or the instance)
        redefines ``predict_output`` (or names no known ``predictions``): backends then run
        the layers and this loss's own ``predict_output``."""
        owner = next(c for c in type(self).__mro__ if "predict_output" in c.__dict__)
        ours = owner.__module__ == __name__ and "predict_output" not in vars(self)
        known = self.predictions in ("softmax", "sigmoid", "exp", "identity")
        return self.predictions if ours and known else "custom"

    def invalid_targets(self, targets: Any, xp: Any = np, classes: int = 2**31) -> str:
        """Why ``targets`` are outside this loss's domain ("" if they are fine); ``classes``:
        the outputs' width."""
        return ""

    def predict_labels(self, outputs: np.ndarray) -> np.ndarray:
        """Predictions from raw host outputs, by ``predictions``: class indices (softmax),
        0/1 per output (sigmoid; one per row, shape ``(n,)``, for one output), else the
        outputs."""
        if self.predictions == "softmax":
            return outputs.argmax(axis=1)
        if self.predictions == "sigmoid":
            labels = (outputs > 0).astype(np.int64)
            return labels[:, 0] if labels.ndim == 2 and labels.shape[1] == 1 else labels
        return np.exp(outputs) if self.predictions == "exp" else outputs

    def predict_output(self, outputs: Any) -> Any:
        """Map raw outputs to predictions by ``predictions``: probabilities for classifiers
        (softmax, sigmoid), else the outputs."""
        if self.predictions == "softmax":
            return self.backend.softmax(outputs)
        if self.predictions == "sigmoid":
            return self.backend.activation(outputs, Act.SIGMOID)
        return self.backend.xp.exp(outputs) if self.predictions == "exp" else outputs

    def count_correct(self, outputs: Any, targets: Any) -> Any | None:
        """Correct predictions in the batch (on the device) where ``counts_correct``, by
        ``predictions``; None if accuracy is undefined."""
        if not self.counts_correct or self.predictions not in ("softmax", "sigmoid"):
            return None
        if self.predictions == "softmax":
            return self.backend.count_correct(outputs, targets)
        targets = targets.reshape(-1, 1) if targets.ndim == 1 else targets
        return ((outputs > 0) == (targets > 0.5)).sum() / outputs.shape[1]

    def row_correct(self, outputs: Any, targets: Any) -> Any | None:
        """Each row's share of correct predictions (1 or 0 for softmax, the share of its
        outputs for sigmoid), as ``count_correct`` counts them; None if accuracy is undefined."""
        if not self.counts_correct or self.predictions not in ("softmax", "sigmoid"):
            return None
        if self.predictions == "softmax":
            labels = targets.argmax(axis=1) if targets.ndim == 2 else targets
            return outputs.argmax(axis=1) == labels
        targets = targets.reshape(-1, 1) if targets.ndim == 1 else targets
        return ((outputs > 0) == (targets > 0.5)).mean(axis=1)

    def get_config(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _check_pair(loss: Loss, outputs: Any, targets: Any) -> None:
    """Shapes of outputs ``(n, k)`` and targets ``(n,)`` (class indices) or ``(n, k)``."""
    for name, a in (("outputs", outputs), ("targets", targets)):
        if not hasattr(a, "shape"):
            raise TypeError(
                f"{type(loss).__name__}: {name} must be an array, got a {type(a).__name__}"
            )
    shape: tuple[int, ...] = tuple(outputs.shape)
    tshape: tuple[int, ...] = tuple(targets.shape)
    if len(shape) != 2:
        raise ValueError(
            f"{type(loss).__name__}: outputs must be 2-D (batch, classes), got shape {tuple(shape)}"
        )
    if loss.width is not None and shape[1] != loss.width:
        raise ValueError(
            f"{type(loss).__name__}: outputs of shape {shape} for a model of {loss.width} "
            "outputs: the loss takes model.forward(x) (the notebooks' network.loss(x, t) is "
            "model.loss(model.forward(x), t))"
        )
    if len(tshape) == 1 and tshape[0] == shape[0] and loss.multiclass:
        if targets.dtype.kind not in "iu":
            raise TypeError(
                f"{type(loss).__name__}: 1-D targets must be integer class indices, "
                f"got dtype {targets.dtype}"
            )
        return
    if len(tshape) == 1 and tshape[0] == shape[0] and shape[1] == 1:
        return  # a column of targets given flat
    if tuple(tshape) != tuple(shape):
        raise ValueError(
            f"{type(loss).__name__}: targets of shape {tuple(tshape)} do not match "
            f"outputs of shape {tuple(shape)} (expected "
            + (f"({shape[0]},) class indices or " if loss.multiclass else "")
            + f"{tuple(shape)})"
        )


class SoftmaxCrossEntropy(Loss):
    """Fused softmax + cross-entropy; integer labels ``(n,)`` or one-hot/soft targets ``(n, k)``."""

    name = "softmax_cross_entropy"
    classification = counts_correct = multiclass = True
    predictions = "softmax"

    label_smoothing = Checked(check_fraction("label_smoothing"))

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def compute(self, logits: Any, targets: Any, weights: Any = None) -> tuple[Any, Any]:
        return self.backend.softmax_xent(
            logits, targets, weights=weights, label_smoothing=self.label_smoothing
        )

    def accumulate(self, logits: Any, targets: Any, weights: Any, totals: Any) -> Any:
        """Fused: one backend op adds the summed (weighted, smoothed) loss into ``totals[0]``
        and the correct count into ``totals[1]``, and writes the gradient into a buffer kept
        per shape (one CUDA kernel on cupy)."""
        dlogits = self.grad_buffer(logits)
        self.backend.softmax_xent(
            logits, targets, dlogits, totals[0:1], 1.0, weights, self.label_smoothing, totals[1:2]
        )
        return dlogits

    def plan(self) -> LossPlan:
        return LossPlan(self.name, "softmax_xent", self.label_smoothing, self.planned_predictions())

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}

    def __repr__(self) -> str:
        smoothing = f"label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return f"SoftmaxCrossEntropy({smoothing})"

    def invalid_targets(self, targets: Any, xp: Any = np, classes: int = 2**31) -> str:
        if targets.ndim == 1:
            if targets.size and (int(targets.min()) < 0 or int(targets.max()) >= classes):
                return f"class indices must be in [0, {classes}) (the outputs' width)"
            return ""
        if targets.size and bool((targets < 0).any()):
            return "soft targets must be non-negative (probabilities or counts)"
        return ""


class SigmoidBinaryCrossEntropy(Loss):
    """Binary cross-entropy on logits, ``max(z, 0) - z*t + log1p(exp(-|z|))``, element mean."""

    name = "sigmoid_binary_cross_entropy"
    classification = counts_correct = True
    predictions = "sigmoid"

    def invalid_targets(self, targets: Any, xp: Any = np, classes: int = 2**31) -> str:
        if targets.size and bool(((targets < 0) | (targets > 1)).any()):
            return "targets must be in [0, 1] (labels or probabilities)"
        return ""

    def compute(self, logits: Any, targets: Any, weights: Any = None) -> tuple[Any, Any]:
        xp = self.backend.xp
        if targets.ndim == 1:
            targets = targets.reshape(-1, 1)
        targets = targets.astype(logits.dtype, copy=False)
        elements = binary_xent_elements(xp, logits, targets)
        grad = (self.predict_output(logits) - targets) / logits.size
        if weights is not None:
            w = weights.reshape(-1, 1).astype(logits.dtype, copy=False)
            elements, grad = elements * w, grad * w
        return elements.mean(), grad

    def accumulate(self, logits: Any, targets: Any, weights: Any, totals: Any) -> Any:
        """One backend op (``Backend.sigmoid_bce``: one kernel on numba and cupy, captured
        in CUDA graphs) adds the summed loss and correct count into ``totals`` and writes the
        gradient into a buffer kept per shape; a subclass with its own ``predict_output``
        computes its reference (``compute``)."""
        if self.planned_predictions() != "sigmoid":  # (the op's gradient is sigmoid's)
            return super().accumulate(logits, targets, weights, totals)
        return self.backend.sigmoid_bce(logits, targets, weights, totals, self.grad_buffer(logits))

    def plan(self) -> LossPlan:
        if self.planned_predictions() != "sigmoid":
            return super().plan()
        return LossPlan(self.name, "sigmoid_bce", predictions="sigmoid")


class ScaledLoss(Loss):
    """A regression loss times ``scale`` (its value and gradient), as scikit-learn's
    MLPRegressor sums a loss over its outputs."""

    scale = Checked(lambda v: check_number(v, "scale", 0, math.inf, "low"))

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def get_config(self) -> dict:
        return {**super().get_config(), **({"scale": self.scale} if self.scale != 1 else {})}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({f'scale={self.scale}' if self.scale != 1 else ''})"


class MeanSquaredError(ScaledLoss):
    """``scale`` times the mean over all elements of ``(y - t)**2``. scikit-learn's
    MLPRegressor trains on half the squares summed over the ``k`` outputs (mean over rows):
    ``scale = k / 2``."""

    name = "mean_squared_error"

    def compute(self, outputs: Any, targets: Any, weights: Any = None) -> tuple[Any, Any]:
        if targets.ndim == 1:
            targets = targets.reshape(outputs.shape)
        diff = outputs - targets.astype(outputs.dtype, copy=False)
        squares, grad = diff * diff, diff * (2.0 * self.scale / diff.size)
        if weights is not None:
            w = weights.reshape(-1, 1).astype(outputs.dtype, copy=False)
            squares, grad = squares * w, grad * w
        return squares.mean() * self.scale, grad

    def accumulate(self, outputs: Any, targets: Any, weights: Any, totals: Any) -> Any:
        """One backend op (``Backend.squared_error``: one kernel on numba and cupy, captured
        in CUDA graphs) adds the summed loss into ``totals[0]`` and writes the gradient into
        a buffer kept per shape."""
        grad = self.grad_buffer(outputs)
        return self.backend.squared_error(outputs, targets, weights, totals, self.scale, grad)

    def plan(self) -> LossPlan:
        return LossPlan(
            self.name, "squared_error", predictions=self.planned_predictions(), scale=self.scale
        )


class Poisson(ScaledLoss):
    """Half the Poisson deviance of counts or rates ``t >= 0`` from log-rates ``z`` (the
    outputs; predictions ``exp(z)``): ``scale`` times the element mean of
    ``exp(z) - t*z + t*log(t) - t``, zero where ``exp(z) == t``. scikit-learn's
    ``MLPRegressor(loss="poisson")`` sums it over the ``k`` outputs: ``scale = k``."""

    name = "poisson"
    predictions = "exp"

    def invalid_targets(self, targets: Any, xp: Any = np, classes: int = 2**31) -> str:
        if targets.size and bool((targets < 0).any()):
            return "targets must be counts or rates >= 0"
        return ""

    def compute(self, outputs: Any, targets: Any, weights: Any = None) -> tuple[Any, Any]:
        xp = self.backend.xp
        t = targets.reshape(outputs.shape).astype(outputs.dtype, copy=False)
        rate = xp.exp(outputs)
        t_log_t = t * xp.log(xp.where(t > 0, t, 1))  # (0 where t is 0)
        deviance, grad = rate - t * outputs + t_log_t - t, (rate - t) * (self.scale / t.size)
        if weights is not None:
            w = weights.reshape(-1, 1).astype(outputs.dtype, copy=False)
            deviance, grad = deviance * w, grad * w
        return deviance.mean() * self.scale, grad


ALIASES = {
    "cross_entropy": "softmax_cross_entropy",
    "xent": "softmax_cross_entropy",
    "bce": "sigmoid_binary_cross_entropy",
    "mse": "mean_squared_error",
    # Keras's names (on logits: fastnet's losses apply the softmax or sigmoid themselves)
    "sparse_categorical_crossentropy": "softmax_cross_entropy",
    "categorical_crossentropy": "softmax_cross_entropy",
    "binary_crossentropy": "sigmoid_binary_cross_entropy",
}


def get_loss(spec: str | dict | Loss) -> Loss:
    """A loss from a name (or alias), a config dict (``get_config``) or an instance."""
    if isinstance(spec, Loss):
        return spec
    config = dict(spec) if isinstance(spec, dict) else {"name": spec}
    name = config.pop("name", None)
    if isinstance(name, str) and name not in LOSSES:
        name = ALIASES.get(name.lower(), name.lower())  # (Keras's "MSE")
    return construct(LOSSES.lookup(name, ALIASES), config)


LOSSES.load = get_loss

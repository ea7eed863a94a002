"""``Sequential``: a stack of layers with a loss and an optimizer; ``fit`` comes from ``Trainer``.

The model owns structure, forward/backward, prediction, state and config. Its parameters live in
one flat ``ParameterArena`` (``fastnet.parameter``) built with the model.
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastnet import state as schema
from fastnet.backends import Backend, get_backend, outside_fastnet, record_kernels
from fastnet.backends.plan import StepPlan
from fastnet.callbacks import History
from fastnet.checkpoint import CheckpointError, plain_json, read_checkpoint, write_checkpoint
from fastnet.initializers import INITIALIZERS, Initializer
from fastnet.layer_stack import (
    backward_checked,
    check_alpha_used,
    check_built_width,
    check_layer_stack,
    check_loss_after_layers,
    check_loss_width,
    check_parameters_listed,
    fix_default_initializers,
    writes_own_gradients,
)
from fastnet.layers import Layer, Standardize, layer_from_config, registered
from fastnet.losses import LOSSES, Loss, get_loss
from fastnet.mixed import LossScaler
from fastnet.optimizers import OPTIMIZERS, Optimizer, get_optimizer, optimizer_from_config
from fastnet.parameter import Parameter, ParameterArena
from fastnet.revision import bump
from fastnet.state import StateEntry, StateError
from fastnet.tabular import LabelEncoding, label_array
from fastnet.training import Trainer, TrainingDivergedError
from fastnet.validation import (
    MIXED_POLICIES,
    check_dtype,
    check_features,
    check_flag,
    check_positive_int,
    check_targets,
    check_top_k,
    host_array,
    keras_x,
    on_device,
)

#: set while ``from_config`` rebuilds a saved model (checks of new models' layer stacks only)
_REBUILDING: contextvars.ContextVar[bool] = contextvars.ContextVar("rebuilding", default=False)


def _check_indices(y: np.ndarray, classes: list, name: str) -> None:
    """Integer ``y`` of a model with other integer classes are class indices (as ``predict``
    returns): labels that are only class values are refused, and labels that may be either
    (all of them class values and indices, e.g. 1 and 2 of classes 1, 2, 3) warned about,
    saying how to encode them."""
    if not np.isin(y, classes).all():
        return
    encode = f"fastnet.tabular.LabelEncoding(model.metadata['classes']).encode({name})"
    if y.min() < 0 or y.max() >= len(classes):
        raise ValueError(
            f"{name} holds labels of model.metadata['classes'] {classes[:10]}; a model takes "
            f"class indices 0..{len(classes) - 1} (as predict returns): pass {encode}"
        )
    if name == "y_val":  # (the training labels said which they are)
        return
    warnings.warn(
        f"{name}'s integers are read as class indices 0..{len(classes) - 1} (as predict "
        f"returns), but they are all model.metadata['classes'] {classes[:10]} too: if they "
        f"are class labels, pass {encode}",
        UserWarning,
        stacklevel=outside_fastnet(),
    )


def _layer_list(layers: Any) -> list[Layer]:
    """``Sequential``'s layers as a list (one layer alone too); anything else in it is named
    (a loss passed as the last layer, as the notebooks' SoftmaxWithLoss was)."""
    layers = [layers] if isinstance(layers, Layer) else list(layers)  # (Sequential(Dense(3)))
    odd = next(((i, x) for i, x in enumerate(layers) if not isinstance(x, Layer)), None)
    if not layers or odd is not None:
        what = "" if odd is None else f": layers[{odd[0]}] is a {type(odd[1]).__name__}"
        loss = (
            " (a loss goes as loss=..., not as the last layer)"
            if odd and isinstance(odd[1], Loss)
            else ""
        )
        raise TypeError(f"layers must be a non-empty sequence of fastnet Layer objects{what}{loss}")
    return layers


class Sequential(Trainer):
    """Layers applied in order; ``fit`` trains them on ``(X, y)``.

    >>> import numpy as np
    >>> from fastnet import Adam, Dense, Sequential
    >>> rng = np.random.default_rng(0)
    >>> X, Xv = rng.standard_normal((64, 4)), rng.standard_normal((16, 4))
    >>> y, yv = (X[:, 0] > 0).astype(int), (Xv[:, 0] > 0).astype(int)
    >>> model = Sequential([Dense(16, "relu"), Dense(2)], optimizer=Adam(1e-3), backend="numpy")
    >>> history = model.fit(X, y, epochs=2, batch_size=32, validation_data=(Xv, yv), verbose=0)
    >>> len(history["val_loss"])
    2
    """

    _optimizer: Optimizer
    _trainable: tuple[bool, ...] = ()  # the layers' trainable flags the arena was grouped by
    _layer_ids: tuple[int, ...] = ()  # the layers it was built with
    _regrouping = False

    def __init__(
        self,
        layers: Sequence[Layer],
        loss: str | Loss = "softmax_cross_entropy",
        optimizer: str | Optimizer = "adam",
        *,
        backend: str | Backend | None = None,
        dtype: Any = "float32",
        seed: int | None = None,
        precision: str = "fp32",
        loss_scale: dict | None = None,
    ) -> None:
        """``dtype`` is float32, float64, or a mixed-precision policy ("mixed_float16",
        "mixed_bfloat16": half compute on float32 master weights, ``fastnet.mixed``);
        ``loss_scale`` sets mixed_float16's ``LossScaler`` (``initial_scale``,
        ``growth_interval``, ``growth_factor``, ``backoff_factor``).
        ``precision`` is how float32 matmuls compute, for this model only: "fp32" (exact,
        the default) or "tf32" (TF32 tensor cores on cupy: faster, ~1e-3 relative error).
        ``seed`` draws the weights, dropout masks and data order; None draws one (fresh each
        model), kept as ``model.seed`` and in the config, so any run can be recreated."""
        layers = _layer_list(layers)
        self.seed = _model_seed(seed)
        self.layers = layers
        self.loss = get_loss(loss)  # (checked against the layers: no Softmax() before it)
        check_layer_stack(layers, isinstance(dtype, str) and dtype in MIXED_POLICIES)
        if not _REBUILDING.get():  # (a file saved before this check loads as it was)
            check_alpha_used(layers)
        fix_default_initializers(layers)  # He for a linear Dense before a separate ReLU
        self.arena: ParameterArena | None = None
        self.optimizer = get_optimizer(optimizer)
        self.backend = get_backend(backend)
        self.policy = dtype if isinstance(dtype, str) and dtype in MIXED_POLICIES else None
        # float32 master weights; the backend must provide half compute
        self.compute_dtype = self.backend.check_policy(self.policy) if self.policy else None
        self.dtype = "float32" if self.policy else dtype
        self.loss_scaler = _loss_scaler(self.backend, self.policy, loss_scale)
        self._casts: dict[tuple, Any] = {}  # mixed precision: the model's cast buffers
        self._inference_lock = threading.Lock()  # (predict from several threads)
        self.precision = _check_precision(self.backend, precision, self.dtype)
        self._rng = np.random.default_rng(self.seed)  # the weights' initial values
        # [seed, epochs trained]: the validation split and each epoch's shuffle follow from it
        self._order = np.array([_data_seed(self.seed), 0], np.int64)
        self.input_dim: int | None = None
        self.history = History()
        #: what the data was, kept in checkpoints (their ``extra``): the CLI's ``classes``
        #: (labels of the output columns), ``features``, ``target`` and ``task``
        self.metadata: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.streamed = False  # whether the last fit streamed its data from host memory
        self.step_description = "not trained yet"
        self._compiled_steps: dict = {}
        self._backward_shape: tuple | None = None  # the outputs of the last training forward
        self.loss.build(self.backend)
        declared = getattr(layers[0], "declared_input_dim", None)
        if declared is not None:  # Keras's Dense(..., input_dim=n): built at once
            self.build(declared)

    # ------------------------------------------------------------------ structure
    @property
    def built(self) -> bool:
        return self.input_dim is not None

    @property
    def optimizer(self) -> Optimizer:
        """The model's optimizer (layers may have their own); its ``lr`` may change between
        steps. Replacing it is for an unbuilt model: a built one's state belongs to it."""
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: str | Optimizer) -> None:
        if getattr(self, "arena", None) is not None and optimizer is not self._optimizer:
            raise ValueError(
                "optimizer: the model is built and its optimizer state belongs to its "
                "optimizer; set lr on model.optimizer, or make a new model for another one"
            )
        self._optimizer = get_optimizer(optimizer)

    @property
    def trainable(self) -> bool:
        """Whether any layer is trainable; setting it sets every layer's (Keras's)."""
        return any(layer.trainable for layer in self.layers)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        flag = check_flag(value, "trainable")
        for layer in self.layers:
            layer.trainable = flag

    @property
    def loss(self) -> Loss:
        """The loss; replacing it on a built model is seen by the next step, compiled or not."""
        return self._loss

    @loss.setter
    def loss(self, loss: str | Loss) -> None:
        loss = get_loss(loss)
        if not _REBUILDING.get():  # (a saved model's weights stay loadable)
            check_loss_after_layers(self.layers, loss)
            if getattr(self, "input_dim", None) is not None:
                check_loss_width(loss, self.output_dim)
        self._loss = loss
        if getattr(self, "_backend", None) is not None:
            self._loss.build(self.backend)
        bump()  # (compiled steps re-read what they baked in)

    @property
    def backend(self) -> Backend:
        """Where the model computes; a built model's arrays live there (``to`` copies it)."""
        return self._backend

    @backend.setter
    def backend(self, backend: str | Backend) -> None:
        self._refuse_when_built("backend", "model.to(backend) copies it onto another")
        self._backend = get_backend(backend)

    @property
    def dtype(self) -> np.dtype:
        """The parameters' dtype (a built model's arrays have it: ``to`` converts a copy)."""
        return self._dtype

    @dtype.setter
    def dtype(self, dtype: Any) -> None:
        self._refuse_when_built("dtype", "model.to(model.backend, dtype) converts a copy")
        self._dtype = check_dtype(dtype)

    def _refuse_when_built(self, name: str, instead: str) -> None:
        if getattr(self, "input_dim", None) is not None:
            raise ValueError(f"{name}: the model is built and its arrays have theirs; {instead}")

    @property
    def epochs_trained(self) -> int:
        """Training epochs finished by ``fit`` (saved in checkpoints): epoch ``e``'s shuffle
        follows from the model's seed and ``e``, so training resumed from a checkpoint sees
        the batches uninterrupted training would."""
        return int(self._order[1])

    @property
    def output_dim(self) -> int:
        if self.input_dim is None:
            raise RuntimeError("the model is not built yet")
        return self.output_width(self.input_dim)

    def output_width(self, input_dim: int) -> int:
        """Width of the outputs for inputs of width ``input_dim`` (no building needed)."""
        width = input_dim
        for layer in self.layers:
            width = layer.output_width(width)
        return width

    def build(self, input_dim: int) -> Sequential:
        """Create the parameters for inputs of width ``input_dim`` (``fit`` does it if needed).
        A built model keeps its weights: building again at its width changes nothing, at
        another width raises (make a new model to start over)."""
        width = check_positive_int(input_dim, "input_dim")
        if self.built:
            if width != self.input_dim:
                raise ValueError(
                    f"input_dim={width}: the model is built for inputs of width "
                    f"{self.input_dim} and keeps its weights; make a new model for another width"
                )
            return self
        check_layer_stack(self.layers)  # (built by another model since: refused, not rebuilt)
        said, widths = self.output_width(width), [width]  # (raises on a mismatch before any
        # layer is built)
        if not _REBUILDING.get():  # (a saved model loads as it was built)
            check_loss_width(self.loss, said)
        drawn = self._rng.bit_generator.state
        try:
            for layer, above in zip(self.layers, [*self.layers[1:], None]):
                layer.precision, layer.compute_dtype = self.precision, self.compute_dtype
                layer.feeds_dense = above is not None and above.fuses_gradients  # (may hand
                # it its activation gradient)
                width = layer.build(width, self.backend, self.dtype, self._rng)
                widths.append(width)
                check_parameters_listed(layer)
            check_built_width(self.layers, widths, said)
        except BaseException:  # (a layer's error, out of memory): unbuilt, to build again
            for layer in self.layers:
                layer._backend = None
            self._rng.bit_generator.state = drawn
            raise
        self._lowest = next((i for i, x in enumerate(self.layers) if x.parameters()), 0)
        self._unchecked: list[Layer] = [
            x for x in self.layers if writes_own_gradients(x)
        ]  # (see backward)
        loss = self.loss  # one loss object may serve models of several widths
        loss.shared = loss.shared or loss.width not in (None, width)
        loss.width = None if loss.shared else width
        self.arena = self._new_arena()
        self.input_dim = int(input_dim)
        return self

    def _unbuild(self, rng_state: dict, loss_width: int | None) -> None:
        """Undo ``build`` (a fit refused after it: the model as it was, its initial weights
        drawn again from the same generator state)."""
        for layer in self.layers:
            layer._backend = None
        self.arena, self.input_dim, self._trainable, self._plan_cache = None, None, (), None
        self._rng.bit_generator.state = rng_state
        self.loss.width = loss_width
        self._compiled_steps.clear()

    def _new_arena(self) -> ParameterArena:
        """The layers' parameters grouped by optimizer, dtype and whether they are frozen."""
        self._trainable = tuple(layer.trainable for layer in self.layers)
        self._layer_ids = tuple(map(id, self.layers))
        assignments = [
            (p, layer.optimizer or self.optimizer, not layer.trainable)
            for layer in self.layers
            for p in layer.parameters()
        ]
        return ParameterArena(assignments, self.backend, self.compute_dtype, self.loss_scaler)

    def _apply_trainable(self) -> None:
        """Layers frozen or unfrozen since the arena was made (``Layer.trainable``): the
        parameters regrouped, every value, gradient, slot and buffer kept; a group that merges
        takes its largest step count (a frozen parameter's slots are as
        it left them). Run before anything reads the arena's grouping (a fit, an update, the state,
        the config), so a saved or copied model is the one the next step would train."""
        flags = tuple(x.trainable for x in self.layers)
        if self.arena is None or self._trainable == flags or self._regrouping or self._fitting:
            return
        self._regrouping = True
        try:
            state = self.get_state()
            grads = [(p, self.backend.xp.array(p.grad, copy=True)) for p in self.parameters()]
            self.arena = self._new_arena()
            self._compiled_steps.clear()  # (they were built for the old groups)
            self._plan_cache = None
            self.set_state(state, validate=False)  # (a merged group: its largest step count)
            for p, grad in grads:  # (a hand loop's backward ran before this update)
                p.grad = grad
        finally:
            self._regrouping = False

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def get_weights(self) -> list[np.ndarray]:
        """Host copies of every layer's parameters, then its buffers (a Dense: ``W`` of shape
        (in, out), ``b``; a BatchNorm1d: gamma, beta, running mean and variance), as Keras's."""
        return [np.array(self.backend.to_numpy(e.ref), copy=True) for e in self._weights()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Copy ``weights`` (``get_weights``'s list) in, as Keras's: all checked first
        (count, shapes, finite values in the model's dtype, variances >= 0), so a refused list
        changes nothing; optimizer state is kept."""
        entries, arrays = self._weights(), list(weights)
        if len(arrays) != len(entries):
            raise ValueError(
                f"set_weights takes {len(entries)} arrays (get_weights), got {len(arrays)}"
            )
        checked = []
        for i, (e, a) in enumerate(zip(entries, arrays)):
            host = host_array(a, f"weights[{i}]")
            if host.dtype.kind not in "biuf":  # (strings would be parsed, imaginary parts cut)
                raise ValueError(f"weights[{i}] must hold real numbers, got dtype {host.dtype}")
            with np.errstate(over="ignore"):
                host = np.asarray(host, e.ref.dtype)
            shaped = host.shape == e.shape
            problem = (
                f"shape {host.shape}"
                if not shaped
                else "NaN or infinite values (in the model's dtype)"
                if not np.isfinite(host).all()
                else "negative values"
                if e.nonneg and (host < 0).any()
                else ""
            )
            if problem:
                _, layer, name = e.key.split("/", 2)
                raise ValueError(
                    f"weights[{i}] ({name} of layer {layer}) must be finite"
                    f"{', >= 0' if e.nonneg else ''}, of shape {e.shape}: got {problem}"
                )
            checked.append(host)
        for e, host in zip(entries, checked):
            e.ref[...] = self.backend.asarray(host)
        assert self.arena is not None  # (built: _weights checked)
        self.arena.refresh_compute()  # (mixed precision's half copies)

    def count_params(self) -> int:
        return sum(p.size for p in self.parameters())

    def _weights(self) -> list[StateEntry]:
        """The state's parameters and buffers, layer by layer (Keras's order of weights)."""
        return [e for e in self.state_entries() if e.kind in ("param", "buffer")]

    def summary(self, print_fn: Any = print) -> str | None:
        """Print the layers, output widths and parameter counts, the loss and the optimizer
        and return None, as Keras's ``summary`` (a notebook cell shows the table once);
        ``print_fn=None`` prints nothing and returns the text."""
        text = self._summary_text()
        if print_fn is None:
            return text
        print_fn(text)
        return None

    def _summary_text(self) -> str:
        lines = [f"Sequential on {self.backend.name} ({self.policy or self.dtype})"]
        total = 0
        for i, layer in enumerate(self.layers):
            n = sum(p.size for p in layer.parameters())
            total += n
            width = layer.output_dim if layer.output_dim is not None else "?"
            lines.append(f"  {i}: {layer!r} -> {width}  params={n}")
        built = "" if self.built else " (not built: widths and parameters appear after build/fit)"
        lines.append(f"  total params={total}{built}")
        lines.append(f"  loss={self.loss!r} optimizer={self.optimizer!r}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ one step
    def forward(self, x: Any, training: bool = False) -> Any:
        """Outputs of the layers on ``x`` (a buffer reused by the next call). Mixed precision:
        ``x`` is rounded to the compute dtype after any leading ``Standardize`` (raw features
        may not fit a half type) and the outputs come back in float32."""
        if not self.built:
            raise RuntimeError("the model is not built yet: call build(input_dim) or fit first")
        lead = 0
        if self.compute_dtype is not None:
            while lead < len(self.layers) and isinstance(self.layers[lead], Standardize):
                x, lead = self.layers[lead].forward(x, training), lead + 1
            x = self.backend.cast(x, self._cast_buffer("x", x.shape, self.compute_dtype))
        for layer in self.layers[lead:]:
            x = layer.forward(x, training)
        if self.compute_dtype is not None:
            x = self.backend.cast(x, self._cast_buffer("y", x.shape, self.dtype))
        self._backward_shape = tuple(x.shape) if training else INFERENCE_RAN
        return x

    def backward(self, dout: Any) -> None:
        """Gradients of every parameter from ``dout``, the loss gradient of ``forward``'s
        outputs. Mixed precision: ``dout`` enters the layers in the compute dtype, times the
        loss scale (float16), which the optimizer step divides out again."""
        if not hasattr(dout, "shape"):
            raise TypeError(
                f"dout must be an array (the loss's gradient), got a {type(dout).__name__}"
            )
        shape = tuple(dout.shape)
        if shape != self._backward_shape:
            last = self._backward_shape
            raise ValueError(
                f"dout of shape {shape}: backward takes the loss gradient of the outputs of "
                "the last forward(x, training=True)"
                + (
                    " (none ran)"
                    if last is None
                    else ""
                    if last == INFERENCE_RAN
                    else f", of shape {last}"
                )
                + (
                    ": an inference forward (predict, evaluate, training=False) ran since and "
                    "replaced its saved inputs; evaluate after backward"
                    if last == INFERENCE_RAN
                    else ""
                )
            )
        if self.compute_dtype is not None:
            scale = None if self.loss_scaler is None else self.loss_scaler.state
            buf = self._cast_buffer("dy", dout.shape, self.compute_dtype)
            dout = self.backend.cast(dout, buf, scale)
        fused = False  # dout is already the layer's dz (and its bias gradient written)
        lowest = self._lowest  # below the lowest layer with parameters no gradient is needed
        for i in range(len(self.layers) - 1, lowest - 1, -1):
            layer = self.layers[i]
            if self._unchecked and layer in self._unchecked and layer.trainable:  # a user's
                self._unchecked.remove(layer)  # first backward checked to write every gradient
                dout, fused = backward_checked(layer, dout, i > lowest), False
                continue
            if not layer.fuses_gradients:
                dout, fused = layer.backward(dout, need_dx=i > lowest), False
                continue
            # a Dense layer under a Dense layer: its activation derivative and bias gradient
            # are carried on by the upper layer's input-gradient GEMM (one fused call on cupy)
            below = self.layers[i - 1].output_gradient() if i > lowest else None
            dout = layer.backward(dout, need_dx=i > lowest, below=below, fused=fused)
            fused = below is not None

    def idle_step(self) -> None:
        """Data parallelism, a rank without rows of a batch: the collectives its layers' step
        would run (synchronized BatchNorm1d), in the order they run."""
        for layer in self.layers:
            layer.idle_step("forward")
        for layer in reversed(self.layers):
            layer.idle_step("backward")

    def _cast_buffer(self, key: str, shape: tuple, dtype: Any) -> Any:
        buf = self._casts.get((key, shape))
        if buf is None:
            if len(self._casts) > 16:  # many batch sizes seen (e.g. predict): drop old ones
                self._casts.clear()
            buf = self._casts[(key, shape)] = self.backend.empty(shape, dtype)
        return buf

    def drop_buffers(self) -> None:
        """Empty the layers', the loss's and the casts' buffer caches (a captured step's
        warm-up: a cache that fills up empties itself, which must not happen between it and
        the capture, or the capture allocates)."""
        for part in (*self.layers, self.loss):
            part.drop_buffers()
        self._casts.clear()

    def scratch_buffers(self) -> list:
        """Every buffer a step writes into and reuses (a captured graph keeps them alive)."""
        layers = [b for layer in self.layers for b in layer.scratch_buffers()]
        return layers + self.loss.scratch_buffers() + list(self._casts.values())

    def step_plan(self) -> StepPlan:
        """The training step as plain data (layers, loss, dtype) for backends that compile
        it; they never read layer attributes themselves."""
        self._require_built()
        layers = tuple(layer.plan() for layer in self.layers)
        groups = self.arena.groups if self.arena is not None else []
        optimizers = tuple((g.optimizer.name, g.optimizer.kernel) for g in groups)
        compute = self.compute_dtype or self.dtype
        return StepPlan(layers, self.loss.plan(), self.dtype, compute, optimizers)

    def apply_gradients(self) -> None:
        """One optimizer step over the whole parameter arena (one fused call per group; none
        for the parameters of layers with ``trainable=False``)."""
        self._require_built()
        self._apply_trainable()
        assert self.arena is not None
        self.arena.write_lr()  # host side: the loop may have changed optimizer.lr
        self.arena.update()

    # ------------------------------------------------------------------ validation
    def _features(self, X: Any, name: str, on_device: bool = True, finite: bool = True) -> Any:
        X = self._named_columns(X, name)
        return check_features(X, name, self.backend, self.dtype, self.input_dim, on_device, finite)

    def _named_columns(self, X: Any, name: str) -> Any:
        """A DataFrame's columns by ``metadata["features"]``'s names, in that order (as the
        CLI reads a CSV; a reordered frame was taken by position, silently)."""
        names, columns = self.metadata.get("features"), getattr(X, "columns", None)
        if not isinstance(names, list) or columns is None or not hasattr(X, "loc"):
            if names is None and columns is not None and hasattr(X, "loc"):
                warnings.warn(  # (as scikit-learn warns)
                    f"{name} has column names, but the model takes its features by position "
                    "(it was trained on an array, or on a frame whose names repeat): its "
                    "columns must come in the training order",
                    stacklevel=outside_fastnet(),
                )
            return X
        by_name = {str(c): c for c in columns}
        if list(by_name) == [str(n) for n in names]:
            return X
        for c in columns:  # (a CSV's names are saved stripped: pandas keeps "a, b"'s " b")
            by_name.setdefault(str(c).strip(), c)
        missing = [n for n in names if str(n) not in by_name]
        if missing:
            raise ValueError(
                f"{name} lacks column(s) {missing[:5]} the model takes "
                f"(model.metadata['features']: {names[:8]})"
            )
        return X[[by_name[str(n)] for n in names]]

    def _targets(self, y: Any, name: str, n: int, width: int, on_device: bool = True) -> Any:
        classes: Any = self.metadata.get("classes")
        classes = classes.tolist() if hasattr(classes, "tolist") else classes  # (an ndarray's)
        single = self.loss.classification and width == 1 and len(classes or ()) == 2  # (binary)
        if isinstance(classes, list) and (self.loss.multiclass or single):  # (the CLI's, ...)
            host = label_array(y)
            if host.dtype.kind in "USO":  # labels by name, as the model was trained on them
                y = LabelEncoding(classes).encode(host, name)
            elif host.dtype.kind in "iu" and host.size and classes != list(range(len(classes))):
                _check_indices(host, classes, name)
        return check_targets(y, name, n, width, self.backend, self.dtype, self.loss, on_device)

    def validate_fit_data(
        self, X: Any, y: Any, validation_data: Any, on_device: bool = True
    ) -> tuple[Any, Any, tuple[Any, ...] | None]:
        """Check training and validation data (``(X_val, y_val)`` or, with row weights,
        ``(X_val, y_val, w_val)``) against the model without changing it."""
        Xd = self._features(X, "X", on_device)
        width = self.output_width(Xd.shape[1])
        yd = self._targets(y, "y", Xd.shape[0], width, on_device)
        if self.loss.multiclass and yd.ndim == 2 and not bool(yd.any()):  # (a zero row weighs
            raise ValueError(  # 0; all of them: the labels were never filled in)
                "y: the targets are all zero: no row names a class (a one-hot row holds a 1)"
            )
        if Xd.shape[0] < self.min_batch_rows():
            raise ValueError(
                f"X has {Xd.shape[0]} sample(s); this model (BatchNorm1d) needs at least "
                f"{self.min_batch_rows()} to train"
            )
        val: tuple[Any, ...] | None = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3)):
                raise ValueError(
                    "validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, "
                    "sample_weight_val)"
                )
            Xv = self._named_columns(validation_data[0], "X_val")
            Xv = check_features(Xv, "X_val", self.backend, self.dtype, Xd.shape[1])
            val = (Xv, self._targets(validation_data[1], "y_val", Xv.shape[0], width))
            if len(validation_data) == 3 and validation_data[2] is not None:
                name = "validation_data's sample weights"
                wv = self.validate_weights(validation_data[2], None, None, Xv.shape[0], name=name)
                val = val if wv is None else (*val, wv)
        return Xd, yd, val

    def validate_weights(
        self,
        sample_weight: Any,
        class_weight: Any,
        y: Any,
        n: int,
        on_device: bool = True,
        input_dim: int | None = None,
        name: str = "sample_weight",
    ) -> Any:
        """Per-row weights from ``sample_weight`` and ``class_weight`` (None when neither is
        given or all are 1, so the unweighted kernels run); checked, changing nothing.
        ``input_dim``: the features' width, for a model not built yet."""
        if sample_weight is None and not class_weight:
            return None
        w = np.ones(n)
        if sample_weight is not None:
            sw = host_array(sample_weight, name)
            if sw.dtype.kind not in "biuf" or sw.shape != (n,):
                raise ValueError(
                    f"{name} must hold {n} numbers (one per row), got {sw.dtype} {sw.shape}"
                )
            if not np.isfinite(sw).all() or (sw < 0).any():
                raise ValueError(f"{name} must be finite and non-negative")
            w *= sw
        if class_weight:
            if not isinstance(class_weight, dict):
                raise TypeError("class_weight must be a dict {label: weight}")
            classes = self._weighted_classes(self.input_dim or input_dim)
            for label in class_weight:
                if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
                    raise ValueError(f"class_weight keys must be integer labels, got {label!r}")
            unknown = sorted(int(k) for k in class_weight if k not in classes)
            if unknown:
                raise ValueError(
                    f"class_weight names label(s) {unknown[:5]} the model lacks (its labels: "
                    f"0 to {len(classes) - 1})"
                )
            labels = host_array(y, "y")
            labels = labels.argmax(axis=1) if labels.ndim == 2 and labels.shape[1] > 1 else labels
            labels = np.rint(labels.reshape(-1)).astype(np.int64)
            for label, weight in class_weight.items():
                if not (isinstance(weight, (int, float, np.number)) and 0 <= weight < np.inf):
                    raise ValueError(f"class_weight[{label}] must be finite and >= 0")
                w[labels == label] *= float(weight)
        if n and not w.any():
            given = [name] * (sample_weight is not None) + ["class_weight"] * bool(class_weight)
            raise ValueError(f"the row weights ({' times '.join(given)}) are all zero")
        if (w == 1).all():
            return None
        with np.errstate(over="ignore"):
            w, wide = w.astype(self.dtype), w
        if not np.isfinite(w).all() or (n and not w.any()):
            fault = "all round to zero in" if np.isfinite(w).all() else "exceed"
            raise ValueError(
                f"the row weights (up to {wide.max():.3g}) {fault} {self.dtype}, the model's "
                "dtype: scale them into its range"
            )
        return self.backend.asarray(w) if on_device else w

    def _weighted_classes(self, input_dim: Any) -> range:
        """The labels ``class_weight`` may name: one class per row (softmax or one sigmoid)."""
        width = self.output_width(input_dim)
        if not self.loss.classification or (not self.loss.multiclass and width > 1):
            raise ValueError(
                "class_weight weighs each row by its class: a "
                + ("multi-label" if self.loss.classification else "regression")
                + " model's rows have none (pass sample_weight)"
            )
        return range(max(width, 2))

    # ------------------------------------------------------------------ inference
    def _require_built(self) -> None:
        if not self.built:
            raise RuntimeError("the model is not built yet: call fit() or build(input_dim) first")
        self._check_layers()

    def _check_layers(self) -> None:
        """A built model's ``layers`` are those it was built with (a list edited in place,
        Keras's ``pop``, trained or predicted with others' shapes, silently)."""
        if self.built and tuple(map(id, self.layers)) != self._layer_ids:
            raise ValueError(
                "model.layers changed after the model was built (its parameters and optimizer "
                "state belong to the layers it was built with): make a new Sequential of the "
                "layers wanted (get_weights/set_weights carry weights over)"
            )

    @keras_x
    def predict_raw(self, X: Any, *, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        """Raw outputs (logits) as a NumPy array, computed ``batch_size`` rows at a time
        (default: 2,048 on a CPU, 8,192 on a GPU; numba's fused call up to 16,384 in parallel
        blocks of 512). ``verbose``: Keras's argument, accepted (inference prints nothing)."""
        self._require_built()
        chunk = _inference_options(batch_size, verbose)
        Xd = self._features(X, "X", finite=False)  # checked chunk by chunk
        return self.backend.to_numpy(self._batched_outputs(Xd, False, chunk, finite="X"))

    @keras_x
    def predict_proba(
        self, X: Any, *, batch_size: int | None = None, verbose: int = 0
    ) -> np.ndarray:
        """The loss's predictions (NumPy): class probabilities for classifiers, the outputs
        of a regression loss (options: ``predict_raw``'s)."""
        self._require_built()
        chunk = _inference_options(batch_size, verbose)
        Xd = self._features(X, "X", finite=False)
        return self.backend.to_numpy(self._batched_outputs(Xd, True, chunk, finite="X"))

    @keras_x
    def predict(self, X: Any, *, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        """Predicted class indices for classifiers, raw outputs otherwise (NumPy)."""
        raw = self.predict_raw(X, batch_size=batch_size, verbose=verbose)
        return self.loss.predict_labels(raw)

    @keras_x
    def evaluate(
        self,
        X: Any,
        y: Any,
        batch_size: int | None = None,
        verbose: int = 0,
        *,
        top_k: int | None = 5,
        metrics: Sequence[Any] = (),
        sample_weight: Any = None,
    ) -> dict[str, float]:
        """The metrics ``fit`` reports on validation data, on ``(X, y)``, as a dict (Keras's
        ``return_dict=True``): the loss; accuracy, macro ``precision``/``recall``/``f1`` and
        ``top{k}_accuracy`` (k < classes) for softmax classifiers, accuracy for sigmoid ones;
        ``mae``/``rmse``/``r2`` for regression; and each of ``metrics`` (``f(y_true, y_pred)
        -> float``) by its name. ``batch_size``, ``verbose``: as for ``predict_raw``.
        ``sample_weight`` weighs rows: the loss as ``fit``'s (the mean over rows of weighted
        losses, Keras's), the metrics by weight (scikit-learn's; user metrics with a
        ``sample_weight`` parameter get it, others are unweighted)."""
        from fastnet.metrics import check_metrics

        self._require_built()
        chunk = _inference_options(batch_size, verbose)
        top_k, metric_fns = check_top_k(top_k), check_metrics(metrics)
        Xd = self._features(X, "X")
        yd = self._targets(y, "y", Xd.shape[0], self.output_dim)
        wd = self.validate_weights(sample_weight, None, None, Xd.shape[0])
        with record_kernels(self.backend):
            return self._evaluate_device(
                Xd, yd, top_k, metrics=metric_fns, batch_size=chunk, weights=wd
            )

    @on_device
    def confusion_matrix(self, X: Any, y: Any) -> np.ndarray:
        """Counts of true class (rows) against predicted class (columns) on ``(X, y)``."""
        from fastnet.metrics import confusion_matrix
        from fastnet.validation import check_class_labels

        self._require_built()
        binary = not self.loss.multiclass and self.output_dim == 1
        if not self.loss.classification or not (self.loss.multiclass or binary):
            kind = "multi-label" if self.loss.classification else "regression"
            raise ValueError(f"confusion_matrix is for class labels, not a {kind} model's outputs")
        predicted = self.predict(X)
        labels = self._targets(y, "y", len(predicted), self.output_dim, on_device=False)
        if binary:  # checked as evaluate's targets, then as 0/1 labels
            labels = check_class_labels(labels.reshape(-1), "y", len(predicted), 2)
        elif labels.ndim == 2:  # one-hot rows
            labels = labels.argmax(axis=1)
        return confusion_matrix(labels, predicted, 2 if binary else self.output_dim)

    # ------------------------------------------------------------------ state
    def state_entries(self) -> list[StateEntry]:
        """The schema of this model's state (``fastnet.state``): one entry per key."""
        self._require_built()
        self._apply_trainable()
        return list(schema.state_entries(self.layers, self.arena, self.loss_scaler, self._order))

    def get_state(self) -> dict[str, Any]:
        """Copies of every parameter, optimizer slot, step count and layer buffer (on device)."""
        return schema.read_state(self.state_entries(), self.backend)

    def host_state(self) -> dict[str, Any]:
        """``get_state`` copied to the host (NumPy arrays; step counts as ints)."""
        return schema.host_state(self.get_state(), self.backend)

    def validate_state(self, state: Any) -> None:
        """Check a state dict before anything is written: known keys, every parameter and
        buffer present, exact shapes, real finite numbers, non-negative where the math needs
        it (second moments, variances), integer step counts (a group takes its largest).
        Raises ``StateError`` naming the key."""
        entries = self.state_entries()
        assert self.arena is not None
        schema.validate_state(entries, self._own_keys(state), self.backend, self.arena.groups)

    def _own_keys(self, state: Any) -> Any:
        """``state`` without a loss scale this model has no use for (a mixed float16
        checkpoint loads into a float32 or bfloat16 model)."""
        if self.loss_scaler is not None or not isinstance(state, dict):
            return state
        return {k: v for k, v in state.items() if k != schema.LOSS_SCALER_KEY}

    def set_state(self, state: dict[str, Any], validate: bool = True) -> None:
        """Write values from ``get_state`` (or a checkpoint) into the live arrays, in place.
        Everything is validated first (``validate_state``): a rejected state changes nothing."""
        if validate:
            self.validate_state(state)
        schema.write_state(self.state_entries(), self._own_keys(state), self.backend)
        assert self.arena is not None
        self.arena.refresh_compute()

    def prepend(self, layer: Layer) -> Sequential:
        """A copy of this built model with ``layer`` first (one without parameters, e.g.
        ``Standardize`` of the raw features), the weights, optimizer state and buffers of its
        own layers after it: the copy takes the inputs ``layer`` takes."""
        self._require_built()
        config = self.get_config()
        config["layers"] = [layer.get_config(), *config["layers"]]
        copy = type(self).from_config(config, self.backend)
        if copy.layers[0].parameters():
            raise ValueError(f"prepend takes a layer without parameters, not {layer!r}")
        copy.set_state(schema.shift_layers(self.get_state(), 1))
        copy.history = self.history.copied()
        # an old CLI checkpoint's scaling describes the inputs ``layer`` now takes
        copy.metadata = {k: v for k, v in self.metadata.items() if k != "scale"}
        return copy

    def to(self, backend: str | Backend, dtype: Any = None) -> Sequential:
        """Return a copy of this model (weights and optimizer state) on another backend, in
        ``dtype`` if given; a mixed-precision model goes to a backend without half compute
        (a CPU) as float32 (its master weights)."""
        target = get_backend(backend)
        config = _config_for(self.get_config(), target, dtype)
        clone = Sequential.from_config(config, backend=target)
        if self.built:
            clone.set_state(self.host_state(), validate=False)
        clone.history = self.history.copied()
        clone.metadata = dict(self.metadata)
        return clone

    # ------------------------------------------------------------------ config and files
    def get_config(self) -> dict[str, Any]:
        """The architecture, loss, optimizer and settings (JSON); refused where a part's class
        would not load back (``Registry.checked_config``: a subclass that kept its parent's
        ``name``, a user's class whose config lacks an ``__init__`` argument)."""
        self._apply_trainable()  # (the config says which layers are frozen)
        for part in self._parts()[len(self.layers) :]:  # (layers: ``registered`` below)
            kinds = ((Loss, LOSSES), (Optimizer, OPTIMIZERS))
            next((r for kind, r in kinds if isinstance(part, kind)), INITIALIZERS).checked_config(
                part
            )
        loss = self.loss.get_config()
        return {
            "layers": [  # frozen as its parameter groups are (a fit's callback: after it)
                {**registered(x).get_config(), **_layer_extras(x, trains)}
                for x, trains in zip(
                    self.layers, self._trainable or [x.trainable for x in self.layers]
                )
            ],
            "loss": loss if len(loss) > 1 else self.loss.name,
            "optimizer": self.optimizer.get_config(),
            "dtype": self.policy or self.dtype.name,
            "seed": self.seed,
            "input_dim": self.input_dim,
            "precision": self.precision,
            **({"loss_scale": self.loss_scaler.settings()} if self.loss_scaler else {}),
        }

    @classmethod
    def from_config(
        cls, config: dict[str, Any], backend: str | Backend | None = None
    ) -> Sequential:
        """Rebuild a model from ``get_config`` (built when the config has an ``input_dim``):
        the same initial weights, as the config's seed is the model's (drawn if it was built
        without one); ``{**config, "seed": None}`` draws fresh ones (an ensemble's)."""
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        layers = config.get("layers")
        if not isinstance(layers, list) or not all(isinstance(c, dict) for c in layers):
            raise TypeError("config['layers'] must be a list of layer configs (dicts)")
        opt = config.get("optimizer")
        if not isinstance(opt, dict):
            raise TypeError("config['optimizer'] must be an optimizer config (dict)")
        backend = get_backend(backend)
        precision = config.get("precision", "fp32")
        if precision == "tf32" and backend.precision_reason(precision):
            precision = "fp32"  # a speed setting: where TF32 is missing, compute exactly
        token = _REBUILDING.set(True)  # a saved model loads as it was built
        try:
            model = cls(
                [layer_from_config(c) for c in layers],
                loss=config.get("loss", "softmax_cross_entropy"),
                optimizer=optimizer_from_config(opt),
                backend=backend,
                dtype=config.get("dtype", "float32"),
                seed=config.get("seed"),
                precision=precision,
                loss_scale=config.get("loss_scale")
                if config.get("dtype") == "mixed_float16"
                else None,
            )
            if config.get("input_dim") is not None:
                model.build(config["input_dim"])
        finally:
            _REBUILDING.reset(token)
        return model

    def save(
        self, path: str | os.PathLike, extra: dict | None = None, *, best_state: Any = None
    ) -> None:
        """Save architecture, weights and optimizer state to ``.npz`` or, for a path ending in
        ``.safetensors``, safetensors (atomic write; host copies, the model stays put), with
        ``extra`` (JSON-able; default ``model.metadata``), which ``load_model`` restores.
        ``best_state``: another state of this model (an early-stopping best epoch's) saved
        beside it, which ``load_model_with_meta`` returns as ``meta["best_state"]``."""
        state, arrays = self.host_state(), dict[str, np.ndarray]()
        for prefix, saved in (("", state), (BEST_PREFIX, best_state)):
            if saved is None:
                continue
            saved = schema.host_state(saved, self.backend)
            if self.arena is not None:
                try:  # (a file that load_model would refuse is never written)
                    self.validate_state(saved)
                except StateError as exc:
                    what = "best_state" if prefix else "not saved"
                    raise ValueError(f"{what}: {exc}; the checkpoint would not load") from None
            arrays |= {prefix + key: np.asarray(value) for key, value in saved.items()}
        extra = plain_json(self.metadata or None if extra is None else extra, "extra (metadata)")
        what = "a get_config() of the model's layers, loss or optimizer"  # (arrays as lists)
        config = plain_json(self.get_config(), what)
        write_checkpoint(path, config, arrays, backend=self.backend.name, extra=extra)

    def to_onnx(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """Export for inference as ONNX (needs ``onnx``): see ``fastnet.export``. Without
        ``metadata``, ``model.metadata``'s classes, features, target, task and inputs (the
        range the inputs are scaled to: a built-in set's pixels / 255) as JSON text."""
        from fastnet.export import to_onnx

        if metadata is None:
            names = ("classes", "features", "target", "task", "inputs")
            keys = [k for k in names if k in self.metadata]
            text = plain_json({k: self.metadata[k] for k in keys}, "model.metadata")
            metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in text.items()}
            metadata = {k: v for k, v in metadata.items() if v != "null"}
        to_onnx(self, path, metadata)

    def onnx_outputs(self) -> list[str]:
        from fastnet.export import onnx_outputs

        return onnx_outputs(self)

    # ------------------------------------------------------------------ pickle and copy
    def __getstate__(self) -> dict[str, Any]:
        """Pickles hold the config, weights, optimizer state and history only: no scratch
        buffers, cached batches or backend objects (size ~ a checkpoint)."""
        return {
            "config": self.get_config(),
            "backend": self.backend.name,
            "state": self.host_state() if self.built else None,
            # users' classes by reference: unpickling imports (and registers) them
            "classes": [
                cls
                for cls in dict.fromkeys(type(x) for x in self._parts())
                if not cls.__module__.startswith("fastnet.") and _importable(cls)
            ],
            "history": self.history,
            "metadata": self.metadata,
            "stop_reason": self.stop_reason,
        }

    def _parts(self) -> list[Any]:
        """The objects its config names: layers, loss, optimizers and initializers."""
        own = [(x.optimizer, getattr(x, "initializer", None)) for x in self.layers]
        named = [x for pair in own for x in pair if isinstance(x, (Optimizer, Initializer))]
        return [*self.layers, self.loss, self.optimizer, *named]

    def __setstate__(self, saved: dict[str, Any]) -> None:
        """Rebuild on the pickled backend, or the default one where that is unavailable;
        arrays may be read-only (``joblib.load(..., mmap_mode="r")``): they are copied in."""
        from fastnet.backends import BackendUnavailableError

        try:
            backend: Backend = get_backend(saved["backend"])
        except BackendUnavailableError:
            backend = get_backend(None)
        clone = Sequential.from_config(_config_for(saved["config"], backend), backend=backend)
        self.__dict__.update(clone.__dict__)
        if saved["state"] is not None:
            self.set_state(saved["state"])
        history = saved["history"]  # (a pickle of before 2026-12-03: a plain dict)
        self.history = history.copied() if isinstance(history, History) else History(history)
        self.metadata = saved.get("metadata", {})  # (pickles of before it)
        self.stop_reason = saved["stop_reason"]

    def __repr__(self) -> str:
        return self._summary_text()


def _layer_extras(layer: Layer, trains: bool) -> dict:
    """What a layer's config holds for the model besides its own: frozen, and its own
    optimizer (any layer may have one; only Dense's config said so)."""
    extras: dict[str, Any] = {} if trains else {"trainable": False}
    if layer.optimizer is not None:
        extras["optimizer"] = layer.optimizer.get_config()
    return extras


def _importable(cls: type) -> bool:
    """Whether pickle finds ``cls`` by its module and name (not a class of a function's, nor
    one defined again since: a re-run notebook cell; the registry loads the current one)."""
    module = sys.modules.get(cls.__module__)
    found: Any = module
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is cls


#: ``_backward_shape`` after an inference forward (no shape equals it)
INFERENCE_RAN = ("inference",)
#: checkpoint keys of a state saved beside the model's own (``save``'s ``best_state``)
BEST_PREFIX = "best/"


def _model_seed(seed: Any) -> int:
    """``seed``, checked; None draws one, kept (the config records what the model used)."""
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0
    ):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(np.random.default_rng().integers(2**32)) if seed is None else int(seed)


def _check_precision(backend: Backend, precision: str, dtype: np.dtype) -> str:
    if precision not in ("fp32", "tf32"):
        raise ValueError(f"precision must be 'fp32' or 'tf32', got {precision!r}")
    reason = backend.precision_reason(precision)
    if precision == "tf32" and dtype != np.float32:
        reason = f"precision='tf32' applies to float32 models, not {dtype}"
    if reason:
        raise ValueError(reason)
    return precision


def _loss_scaler(backend: Backend, policy: str | None, settings: dict | None) -> LossScaler | None:
    """mixed_float16's loss scaler with ``settings`` (an error for other dtypes)."""
    if settings is not None and policy != "mixed_float16":
        raise ValueError(f"loss_scale applies to dtype='mixed_float16' only, not {policy!r}")
    if policy != "mixed_float16":
        return None
    try:
        return LossScaler(backend, **(settings or {}))
    except TypeError as exc:
        raise ValueError(f"loss_scale: {exc}") from None


def _check_saved_dtype(model: Sequential, arrays: dict, policy: str) -> None:
    """The file's floating-point arrays hold the dtype its config names (a mixed policy's:
    float32 master weights); ``model`` may be in another (``load_model(dtype=...)``)."""
    saved = np.dtype("float32" if policy in MIXED_POLICIES else policy)
    for e in model.state_entries():
        value = arrays.get(e.key)
        if e.dtype is not None and e.dtype.kind == "f" and value is not None:
            if value.dtype != saved and e.key != schema.LOSS_SCALER_KEY:
                raise StateError(
                    f"{e.key!r} holds {value.dtype}; the checkpoint's model is {policy}"
                )


def _config_for(config: dict, backend: Backend, dtype: Any = None) -> dict:
    """``config`` in ``dtype`` if given, else with a mixed-precision policy ``backend`` cannot
    compute replaced by float32 (the master weights' dtype)."""
    if dtype is None and config.get("dtype") in MIXED_POLICIES:
        try:
            backend.check_policy(config["dtype"])
        except (ValueError, NotImplementedError):
            dtype = "float32"
    return config if dtype is None else {**config, "dtype": dtype}


def _inference_options(batch_size: int | None, verbose: int) -> int:
    """Inference's rows per chunk (0: the default) from Keras's ``batch_size`` and
    ``verbose`` (checked, then unused: inference prints nothing)."""
    if verbose not in (0, 1, 2, "auto"):  # (False and True are 0 and 1, as in fit)
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    return 0 if batch_size is None else check_positive_int(batch_size, "batch_size")


def _data_seed(seed: int | None) -> int:
    """The seed of a model's data order, derived from the model's ``seed`` (fresh if None)
    apart from the stream its weights are drawn from."""
    return int(np.random.default_rng(None if seed is None else [seed, 1]).integers(2**62))


def save_model(model: Sequential, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Save a built model (same as ``model.save(path)``)."""
    if not isinstance(model, Sequential):
        raise TypeError(f"save_model(model, path) takes the model first, got {model!r}")
    model.save(path, extra)


def load_model(
    path: str | os.PathLike, backend: str | Backend | None = None, dtype: Any = None
) -> Sequential:
    """Load a ``Sequential`` saved by ``Sequential.save`` onto ``backend``; ``dtype`` replaces
    the saved one (a mixed-precision checkpoint loads as float32 where ``backend`` cannot run
    its policy, as ``to`` and unpickling do)."""
    model, _ = load_model_with_meta(path, backend, dtype)
    return model


def _check_widths(config: dict, arrays: dict[str, np.ndarray]) -> None:
    """The config's widths against the file's arrays, before building allocates what they
    ask for (a file of a few bytes must not make the loader allocate gigabytes): each
    ``Dense``'s weight and ``BatchNorm1d``'s scale is in the file, in its shape."""
    from fastnet.layers import BatchNorm1d, Dense

    width = int(config["input_dim"])
    for i, layer in enumerate(layer_from_config(c) for c in config["layers"]):
        out = layer.output_width(width)
        key, shape = {Dense: ("W", (width, out)), BatchNorm1d: ("gamma", (width,))}.get(
            type(layer), ("", ())
        )
        got = getattr(arrays.get(f"param/{i}/{key}"), "shape", "missing")
        if key and got != shape:
            raise ValueError(f"layer {i} needs 'param/{i}/{key}' of shape {shape}, got {got}")
        width = out


def load_model_with_meta(
    path: str | os.PathLike, backend: str | Backend | None = None, dtype: Any = None
) -> tuple[Sequential, dict]:
    """Read, verify and validate a checkpoint, then build the model (in ``dtype`` if given);
    every problem with the file is a ``CheckpointError`` naming the file (and the key)."""
    name, target = os.fspath(path), get_backend(backend)  # (a bad backend is no file's fault)
    if dtype is not None:  # (nor a bad dtype)
        target.check_policy(dtype) if dtype in MIXED_POLICIES else check_dtype(dtype)
    meta, arrays = read_checkpoint(path)
    config = meta.get("config")
    try:
        if not isinstance(config, dict) or config.get("input_dim") is None:
            raise TypeError("no built model config (config/input_dim missing)")
        # a mixed-precision checkpoint on a backend without half compute: float32 masters
        config = _config_for(config, target, dtype)
        _check_widths(config, arrays)
        model = Sequential.from_config(config, backend=target)
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        NotImplementedError,
        MemoryError,
    ) as exc:
        raise CheckpointError(f"{name!r} has an invalid architecture (config): {exc}") from None
    extra = meta.get("extra")
    model.metadata = dict(extra) if isinstance(extra, dict) else {}
    best = {k[len(BEST_PREFIX) :]: arrays.pop(k) for k in list(arrays) if k.startswith(BEST_PREFIX)}
    try:
        _check_saved_dtype(model, arrays, meta["config"].get("dtype", "float32"))
        model.set_state(arrays)
        if best:  # (checked as the model's own state is)
            model.validate_state(best)
    except StateError as exc:
        raise CheckpointError(f"{name!r}: {exc}") from None
    meta["best_state"] = best or None
    return model, meta


__all__ = [
    "Sequential",
    "StateError",
    "TrainingDivergedError",
    "load_model",
    "load_model_with_meta",
    "save_model",
]

"""Layers: Dense (with fused activation), ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, Dropout,
BatchNorm1d. Each layer's backward sits right below its forward.

Layers compute through the backend object they were built with and write into buffers they
own, reused from step to step: an output is valid until the layer's next forward call.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

from fastnet.backends import Backend, activation_code
from fastnet.backends.base import Act, ActGrad, ReluMask, activation_name
from fastnet.backends.counter_rng import drop_threshold, stream_key
from fastnet.backends.interop import host_array
from fastnet.backends.plan import ActivationPlan, DensePlan, DropoutPlan, OpaquePlan, OpsPlan
from fastnet.initializers import Initializer, get_initializer, initializer_from_config
from fastnet.optimizers import Optimizer, get_optimizer, optimizer_from_config
from fastnet.parameter import Parameter
from fastnet.registry import Registry, construct
from fastnet.validation import (
    Checked,
    SetOnce,
    check_flag,
    check_fraction,
    is_real,
    set_unpickled_state,
)


def check_alpha(alpha: Any) -> float:
    """Leaky-ReLU slope: any finite real, negative too (as PyTorch). A negative slope makes the
    output's sign say nothing about the input's, so those layers keep their pre-activation for
    the exact gradient."""
    if not (is_real(alpha) and math.isfinite(alpha)):
        raise ValueError(f"alpha (leaky_relu slope) must be a finite number, got {alpha!r}")
    return float(alpha)


def _check_eps(eps: Any) -> float:
    if not (is_real(eps) and eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be positive, got {eps!r}")
    return float(eps)


def _sign_from_input(code: Act, alpha: float) -> bool:
    """Whether the activation's derivative must be read from its input (leaky_relu with a
    negative slope), not from its output."""
    return code == Act.LEAKY_RELU and alpha < 0


#: layer classes by ``name``: what configs (checkpoints, pickles) are loaded with
LAYERS = Registry("layer")


class ParameterAttribute:
    """A layer's Parameter attribute, set by ``build``. Read as a plain attribute (no
    ``__get__``: as fast); an array assigned to it is refused (the notebooks' ``self.W = W``:
    the model kept training its own, then failed on the stranger)."""

    name = ""  # (set by __set_name__; a copy of the descriptor itself starts without one)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __set__(self, layer: Any, value: Any) -> None:
        if isinstance(layer.__dict__.get(self.name), Parameter) and not isinstance(
            value, Parameter
        ):
            raise AttributeError(
                f"{type(layer).__name__}.{self.name} is a Parameter the model trains: write its "
                f"values into it (layer.{self.name}.value = array copies them in place) or use "
                "model.set_weights"
            )
        layer.__dict__[self.name] = value

    def __getattr__(self, attr: str) -> Any:  # (read before build: the class's object)
        if attr.startswith("__"):  # (copy and pickle probe for their hooks)
            raise AttributeError(attr)
        raise AttributeError(
            f"{self.name} is created when the model is built (model.build(input_dim), or fit): "
            f"no {attr!r} before"
        )

    def __repr__(self) -> str:
        return f"<{self.name}: created when the model is built>"


class Layer:
    """Base class. Subclasses implement ``build`` (creating ``Parameter`` objects),
    ``parameters`` (returning them), ``forward`` and ``backward`` (assigning each parameter's
    ``grad``: ``p.grad = ...`` is copied into the model's gradient storage; do not add to it),
    ``output_width`` if it changes the width, and ``get_config`` for arguments of their own
    (``{**super().get_config(), "k": k}``: a config names its class). A subclass whose body
    sets ``name`` is
    registered by it, so models holding it save and load (define it before loading)."""

    name = "layer"
    #: smallest batch the layer accepts in training
    min_batch_rows = 1
    #: float32 matmul precision ("fp32" or "tf32"), set by the model that builds the layer
    precision = "fp32"
    #: dtype of activations and parameter copies under mixed precision (``fastnet.mixed``),
    #: set by the model that builds the layer; None: the parameters' dtype
    compute_dtype: np.dtype | None = None
    #: data-parallel training: statistics over the global batch, not this rank's rows
    #: (BatchNorm1d(synchronized=True)); such a layer needs min_batch_rows in the global batch
    synchronized = False
    #: the next layer of its model is a Dense layer (set by the model that builds the layer)
    feeds_dense = False
    #: state buffers that must stay >= 0 (checked when a state is loaded)
    nonnegative_buffers: tuple[str, ...] = ()
    #: data-parallel training: the state buffers are statistics of each rank's rows, averaged
    #: over the ranks after every epoch (BatchNorm1d's running mean and variance)
    averaged_buffers = False
    #: its ``backward`` takes ``below``/``fused``: it carries the lower layer's activation
    #: gradient in its own GEMM (Dense)
    fuses_gradients = False
    #: False: its parameters are frozen (no optimizer updates them; gradients still flow
    #: through it to the layers below; buffers such as running statistics still update in
    #: training); a change takes effect at the model's next ``fit`` or ``apply_gradients``
    #: (or save, copy or state read outside a fit; a fit's callback's: after that fit)
    trainable = Checked(lambda value: check_flag(value, "trainable"), True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        LAYERS.register(cls)
        if {"forward", "backward"} & set(cls.__dict__):  # its own maths: not the parent's
            for hook in ("plan", "output_gradient"):  # fused forms (compiled steps, GEMMs)
                if hook not in cls.__dict__:
                    setattr(cls, hook, getattr(Layer, hook))
        if "backward" in cls.__dict__ and "fuses_gradients" not in cls.__dict__:
            cls.fuses_gradients = False

    def __init__(self) -> None:
        self._backend: Backend | None = None
        self.dtype: np.dtype = np.dtype(np.float32)
        self.input_dim: int | None = None
        self.output_dim: int | None = None
        self._optimizer: Optimizer | None = None
        self._buffers: dict[tuple, Any] = {}

    def __setstate__(self, state: dict) -> None:
        set_unpickled_state(self, state)

    def __getattr__(self, attr: str) -> Any:  # (only for a name that is no attribute)
        if (
            attr.startswith("d")
            and isinstance(  # the notebooks' self.dW, self.db
                getattr(type(self), attr[1:], None), ParameterAttribute
            )
        ):
            raise AttributeError(
                f"{type(self).__name__} keeps no {attr}: the gradient is layer.{attr[1:]}.grad "
                f"(after model.backward) and the values layer.{attr[1:]}.value"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    @property
    def built(self) -> bool:
        return self._backend is not None

    @property
    def optimizer(self) -> Optimizer | None:
        """This layer's own optimizer (None: the model's). Set before the model is built: a
        built layer's optimizer state belongs to the optimizer it was built with."""
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: str | Optimizer | None) -> None:
        if self._backend is not None and optimizer is not self._optimizer:
            raise ValueError(
                f"optimizer: {type(self).__name__} is built and its optimizer state belongs to "
                f"its optimizer; set lr on layer.optimizer, or build a new model for another one"
            )
        self._optimizer = None if optimizer is None else get_optimizer(optimizer)

    @property
    def backend(self) -> Backend:
        """The backend the layer was built on (an error before ``build``)."""
        if self._backend is None:
            raise RuntimeError(
                f"{type(self).__name__} is not built: add it to a Sequential "
                f"and fit/build the model, or call build() first"
            )
        return self._backend

    def build(
        self, input_dim: int, backend: Backend, dtype: np.dtype, rng: np.random.Generator
    ) -> int:
        """Create parameters for inputs of width ``input_dim``; returns the output width,
        ``output_width(input_dim)`` (a layer that changes the width overrides both)."""
        self._backend, self.dtype, self.input_dim = backend, np.dtype(dtype), input_dim
        self.output_dim = input_dim
        return input_dim

    def output_width(self, input_dim: int) -> int:
        """Output width for inputs of width ``input_dim``, known before building (the model
        sizes its outputs and checks targets with it): override it where ``build`` returns
        another width than ``input_dim``."""
        return input_dim

    def fork_random_stream(self, rank: int) -> None:
        """Give this process (rank) its own random stream (data-parallel training)."""

    def join_group(self, group: Any) -> None:
        """Data-parallel training starts (a communicator) or ends (None): layers whose
        training step talks to the other ranks keep it."""

    def idle_step(self, phase: str) -> None:
        """Take part in the collectives of a training step's ``phase`` ("forward",
        "backward") without rows: this rank has none of the batch."""

    def _buffer(self, key: str, shape: tuple, dtype: Any = None) -> Any:
        """The layer's reused buffer ``key`` of ``shape``, in the compute dtype by default."""
        buf = self._buffers.get((key, shape))
        if buf is None:
            if len(self._buffers) > 16:  # many batch sizes seen (e.g. predict): drop old ones
                self._buffers.clear()
            dtype = dtype or self.compute_dtype or self.dtype
            buf = self._buffers[(key, shape)] = self.backend.empty(shape, dtype)
        return buf

    def scratch_buffers(self) -> list:
        """The output/gradient buffers the layer reuses between steps (a captured graph keeps
        them alive: it writes into them on every replay)."""
        return list(self._buffers.values())

    def drop_buffers(self) -> None:
        """Empty the buffer cache (made again as steps need them)."""
        self._buffers.clear()

    def forward(self, x: Any, training: bool = True) -> Any:
        raise NotImplementedError

    def _check_input(self, x: Any) -> None:
        """Cheap boundary check: built, 2-D, and as wide as the layer was built for."""
        _ = self.backend  # raises if not built
        shape = getattr(x, "shape", None)
        if shape is None:
            raise TypeError(
                f"{type(self).__name__} expects an array of shape (batch, {self.input_dim}), "
                f"got a {type(x).__name__} (model.backend.asarray(x) makes one)"
            )
        if len(shape) != 2 or shape[1] != self.input_dim:
            raise ValueError(
                f"{type(self).__name__} expects inputs of shape (batch, "
                f"{self.input_dim}), got {tuple(shape)}"
            )

    def backward(self, dy: Any, need_dx: bool = True) -> Any:
        raise NotImplementedError

    def output_gradient(self) -> ActGrad | None:
        """How this layer's backward starts (its activation derivative and bias gradient),
        for a Dense layer above to fuse into its input-gradient GEMM; None: not fusable."""
        return None

    def plan(self) -> DensePlan | ActivationPlan | DropoutPlan | OpsPlan | OpaquePlan:
        """This layer as plain data for a compiled step (``fastnet.backends.plan``); a
        subclass with its own ``forward``/``backward`` gets this one unless it defines its own."""
        return OpaquePlan(type(self).__name__, "computes with its own forward/backward")

    def parameters(self) -> list[Parameter]:
        return []

    def state_buffers(self) -> dict[str, Any]:
        """Non-trainable state saved in checkpoints (e.g. BatchNorm running statistics)."""
        return {}

    def random_streams(self) -> dict[str, Any]:
        """Counter-based random streams (``[key, step]``, int64 on the device) saved in
        checkpoints, so resumed training draws what uninterrupted training would."""
        return {}

    def frozen_constants(self) -> tuple:
        """Host values a captured step bakes in (a change captures again)."""
        return ()

    def inference_constants(self) -> tuple[str, ...]:
        """Attributes a fused inference plan holds (a change builds it again)."""
        return ()

    def get_config(self) -> dict:
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: dict) -> Layer:
        """The layer ``get_config`` describes (unknown keys are an error; a user's class is
        not given keys of its base class's config that its ``__init__`` does not take)."""
        config = dict(config)
        config.pop("name", None)
        return construct(cls, config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer ``y = act(x @ W + b)`` with an optional fused activation.

    ``initializer`` (name or object) and ``optimizer`` (overrides the model's for this layer)
    are injectable, as in the notebooks' FC layer.
    """

    name = "dense"
    fuses_gradients = True
    alpha = Checked(check_alpha)  # the leaky_relu slope
    units, activation, activation_code, use_bias = SetOnce(), SetOnce(), SetOnce(), SetOnce()
    # W, b (and BatchNorm1d's gamma, beta): Parameters that build creates
    W: Parameter = ParameterAttribute()  # type: ignore[assignment]
    b: Parameter | None = ParameterAttribute()  # type: ignore[assignment]

    def __init__(
        self,
        units: int,
        activation: str | None = None,
        *notebook_form: Any,
        input_dim: int | None = None,
        initializer: str | Initializer | None = None,
        optimizer: str | Optimizer | None = None,
        use_bias: bool = True,
        alpha: float = 0.01,
    ) -> None:
        if notebook_form:  # (Python's own error names no way out)
            raise TypeError(
                f"Dense/FC/Affine take (units, activation=None) and keywords, not "
                f"{2 + len(notebook_form)} positional arguments: the notebooks' FC(n_in, n_out, "
                "initializer, optimizer) is Dense(n_out, input_dim=n_in, initializer=..., "
                "optimizer=...)"
            )
        super().__init__()
        if np.ndim(units) > 0:  # (the notebooks' Affine(W, b): an array printed whole)
            raise TypeError(
                f"Dense/FC/Affine take units, an int, not weights (got an array of shape "
                f"{np.shape(units)}): the notebooks' Affine(W, b) is layer = "
                "Dense(W.shape[1], input_dim=W.shape[0]) in a model (Sequential([layer, ...]) "
                "builds it), then layer.W.value = W and layer.b.value = b"
            )
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"units must be a positive integer, got {units!r}")
        if input_dim is not None and (
            not isinstance(input_dim, (int, np.integer)) or input_dim <= 0
        ):
            raise ValueError(f"input_dim must be a positive integer, got {input_dim!r}")
        if isinstance(activation, (int, np.integer)) and not isinstance(activation, bool):
            raise ValueError(
                f"Dense({units}, {activation}): the second argument is the activation; the "
                f"input width comes from the data (the notebooks' Affine/FC({units}, "
                f"{activation}) is Dense({activation}), or Dense({activation}, input_dim={units}))"
            )
        self.units = int(units)
        self.activation_code = activation_code(activation)
        activation = activation_name(activation)
        self.activation = None if activation in (None, "linear") else activation
        self.declared_input_dim = input_dim
        self.initializer = get_initializer(initializer, self.activation)
        self.optimizer = optimizer
        self.use_bias = check_flag(use_bias, "use_bias")
        self.alpha = alpha
        self.b = None

    def frozen_constants(self) -> tuple:
        return (self.alpha,)

    def inference_constants(self) -> tuple[str, ...]:
        return ("alpha",) if self.activation_code == Act.LEAKY_RELU else ()

    def output_width(self, input_dim: int) -> int:
        if self.declared_input_dim is not None and self.declared_input_dim != input_dim:
            raise ValueError(
                f"Dense(input_dim={self.declared_input_dim}) receives inputs of width {input_dim}"
            )
        return self.units

    def build(
        self, input_dim: int, backend: Backend, dtype: np.dtype, rng: np.random.Generator
    ) -> int:
        self.output_width(input_dim)
        super().build(input_dim, backend, dtype, rng)
        weights = self.initializer(rng, input_dim, self.units, self.dtype)
        want = (input_dim, self.units)
        got = (getattr(weights, "shape", None), getattr(weights, "dtype", type(weights)))
        if got != (want, self.dtype) or not np.isfinite(weights).all():
            raise ValueError(
                f"{self.initializer!r} gave {got[1]} {got[0]} for Dense({self.units}): an "
                f"initializer returns a finite {want} array of the dtype it is given ({self.dtype})"
            )
        self.W = Parameter("W", backend.asarray(weights))
        self.b = (
            Parameter("b", backend.zeros((self.units,), self.dtype), decay=False)
            if self.use_bias
            else None
        )
        self.output_dim = self.units
        return self.units

    def forward(self, x: Any, training: bool = True) -> Any:
        self._check_input(x)
        self.x = x
        out = self._buffer("y", (x.shape[0], self.units))
        bias = self.b.compute if self.b is not None else None
        W, act, alpha = self.W.compute, self.activation_code, self.alpha
        self.relu_mask = None
        if _sign_from_input(act, alpha):  # keep z = x @ W + b for the gradient
            self.z = self.backend.linear(
                x, W, bias, Act.LINEAR, alpha, self._buffer("z", out.shape), self.precision
            )
            self.y = self.backend.activation(self.z, act, alpha, out)
            return self.y
        if training and self.feeds_dense and act == Act.RELU and bias is not None:
            size = self.backend.relu_mask(x.shape[0], self.units, x.dtype, self.precision)
            self.relu_mask = (
                ReluMask(self._buffer("relu_mask", (size,), np.uint8)) if size else None
            )
        self.z = self.y = self.backend.linear(
            x, W, bias, act, alpha, out, self.precision, self.relu_mask
        )
        return self.y

    def backward(
        self, dy: Any, need_dx: bool = True, below: ActGrad | None = None, fused: bool = False
    ) -> Any:
        """Gradients from ``dy``; returns dx, or with ``below`` (the Dense layer under this
        one, ``output_gradient``) that layer's dz. ``fused``: ``dy`` is already this layer's
        dz, and its bias gradient written (by the layer above)."""
        dx = self._buffer("dx", (dy.shape[0], self.input_dim)) if need_dx else None
        db = self.b.grad if self.b is not None else None
        dz = self._buffer("dz", dy.shape)  # also for linear: nothing allocates in a step
        return self.backend.linear_backward(
            self.x,
            self.W.compute,
            self.z,  # the output, or the pre-activation where the derivative needs it
            dy,
            Act.LINEAR if fused else self.activation_code,
            self.alpha,
            self.W.grad,
            None if fused else db,
            dx,
            need_dx,
            dz,
            self.precision,
            below,
        )

    def output_gradient(self) -> ActGrad | None:
        db = self.b.grad if self.b is not None else None
        mask = self.relu_mask if self.relu_mask is not None and self.relu_mask.written else None
        dz = self._buffer("dz", self.z.shape)
        return ActGrad(self.z, self.activation_code, self.alpha, dz, db, mask)

    def parameters(self) -> list[Parameter]:
        if not self.built:
            return []
        return [self.W] + ([self.b] if self.b is not None else [])

    def plan(self) -> DensePlan | OpaquePlan:
        if _sign_from_input(self.activation_code, self.alpha):
            return OpaquePlan("Dense", "a negative leaky_relu slope keeps the pre-activation")
        b = self.b
        return DensePlan(
            self.W.compute,
            self.W.grad,
            None if b is None else b.compute,
            None if b is None else b.grad,
            self.activation_code,
            self.alpha,
        )

    def get_config(self) -> dict:
        config = {
            "name": self.name,
            "units": self.units,
            "activation": self.activation,
            "initializer": self.initializer.get_config(),
            "use_bias": self.use_bias,
            "alpha": self.alpha,
        }
        if self.optimizer is not None:
            config["optimizer"] = self.optimizer.get_config()
        return config

    @classmethod
    def from_config(cls, config: dict) -> Layer:
        config = dict(config)
        if "initializer" in config:
            config["initializer"] = initializer_from_config(config["initializer"])
        if "optimizer" in config:
            config["optimizer"] = optimizer_from_config(config["optimizer"])
        return super().from_config(config)


class Activation(Layer):
    """Elementwise activation as its own layer (the notebooks' ReLU/Sigmoid classes)."""

    name = "activation"
    kind = "linear"

    alpha = Checked(check_alpha)

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = alpha
        self.code: Act = activation_code(self.kind)

    def frozen_constants(self) -> tuple:
        return (self.alpha,)

    def inference_constants(self) -> tuple[str, ...]:
        return ("alpha",) if self.code == Act.LEAKY_RELU else ()

    def forward(self, x: Any, training: bool = True) -> Any:
        self._check_input(x)
        self.x = x
        self.y = self.backend.activation(x, self.code, self.alpha, self._buffer("y", x.shape))
        return self.y

    def backward(self, dy: Any, need_dx: bool = True) -> Any:
        if not need_dx:
            return None
        out = self._buffer("dx", dy.shape)
        # leaky_relu's derivative is read from the sign: of the input for a negative slope
        sign = self.x if _sign_from_input(self.code, self.alpha) else self.y
        return self.backend.activation_backward(sign, dy, self.code, self.alpha, out)

    def plan(self) -> ActivationPlan:
        return ActivationPlan(self.code, self.alpha)


class ReLU(Activation):
    name = kind = "relu"


class LeakyReLU(Activation):
    name = kind = "leaky_relu"

    def get_config(self) -> dict:
        return {"name": self.name, "alpha": self.alpha}


class Sigmoid(Activation):
    name = kind = "sigmoid"


class Tanh(Activation):
    name = kind = "tanh"


class Softmax(Layer):
    """Softmax over features. For training classifiers prefer the fused SoftmaxCrossEntropy loss."""

    name = "softmax"

    def forward(self, x: Any, training: bool = True) -> Any:
        self.y = self.backend.softmax(x)
        return self.y

    def backward(self, dy: Any, need_dx: bool = True) -> Any:
        if not need_dx:
            return None
        y = self.y
        return y * (dy - (dy * y).sum(axis=1, keepdims=True))


def _check_dropout_seed(seed: Any) -> int | None:
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0
    ):
        raise ValueError(f"dropout seed must be a non-negative integer or None, got {seed!r}")
    return None if seed is None else int(seed)  # (a NumPy integer: saved as JSON)


def _check_synchronized(value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"synchronized must be True or False, got {value!r}")
    return bool(value)


class Dropout(Layer):
    """Inverted dropout: zeroes a fraction ``rate`` of inputs in training, identity in eval.

    Masks come from a counter-based random stream (``fastnet.backends.counter_rng``) whose key
    and step count live on the device: the same masks for a seed on every backend, eagerly or
    in a compiled step. A ``rate`` a callback changes takes effect at the next step, in
    compiled steps too (they read it again, as every baked-in constant)."""

    name = "dropout"

    rate = Checked(check_fraction("dropout rate"))
    seed = Checked(_check_dropout_seed)  # (set on a built layer: saved, its stream kept)

    def __init__(self, rate: float = 0.5, seed: int | None = None) -> None:
        super().__init__()
        self.rate, self.seed = rate, seed

    def build(
        self, input_dim: int, backend: Backend, dtype: np.dtype, rng: np.random.Generator
    ) -> int:
        self._seed = self.seed if self.seed is not None else int(rng.integers(2**31))
        self.stream = backend.asarray(np.array([stream_key(self._seed), 0], np.int64))
        return super().build(input_dim, backend, dtype, rng)

    def fork_random_stream(self, rank: int) -> None:
        key = np.array([stream_key(self._seed, rank)], np.int64)
        self.backend.copy_from_host(self.stream[:1], key)

    def forward(self, x: Any, training: bool = True) -> Any:
        self.mask = None
        if not training or self.rate == 0:
            return x
        backend = self.backend
        out, self.mask = self._buffer("out", x.shape), self._buffer("mask", x.shape)
        scale = 1.0 / (1.0 - self.rate)
        backend.dropout(x, self.stream, drop_threshold(self.rate), scale, out, self.mask)
        backend.advance_counter(self.stream[1:], 1)
        return out

    def backward(self, dy: Any, need_dx: bool = True) -> Any:
        if not need_dx:
            return None
        if self.mask is None:
            return dy
        return self.backend.dropout_backward(dy, self.mask, self._buffer("dx", dy.shape))

    def plan(self) -> DropoutPlan:
        return DropoutPlan(self.rate, self.stream)

    def random_streams(self) -> dict[str, Any]:
        return {"dropout": self.stream}

    def frozen_constants(self) -> tuple:
        return (self.rate,)

    def get_config(self) -> dict:
        return {"name": self.name, "rate": self.rate, "seed": self.seed}


class BatchNorm1d(Layer):
    """Batch normalization over the batch axis, with learned scale/shift and running statistics
    (unbiased running variance, as PyTorch) used in eval mode. ``momentum`` is the share of the
    running statistics kept each step, ``running = momentum * running + (1 - momentum) *
    batch``: the notebooks' and Keras's convention; PyTorch's ``momentum`` is the batch's share
    (its 0.1 is 0.9 here). Training needs at least 2 rows a batch. ``synchronized`` (Keras's name;
    PyTorch's SyncBatchNorm): in data-parallel training the statistics are the global batch's,
    not each rank's share, so K ranks train as one process does (three all-reduces a step)."""

    name = "batchnorm1d"
    min_batch_rows = 2
    nonnegative_buffers = ("running_var",)
    averaged_buffers = True

    momentum = Checked(check_fraction("momentum"))
    eps = Checked(_check_eps)
    synchronized = Checked(_check_synchronized)
    gamma: Parameter = ParameterAttribute()  # type: ignore[assignment]
    beta: Parameter = ParameterAttribute()  # type: ignore[assignment]

    def __init__(
        self, momentum: float = 0.9, eps: float = 1e-5, synchronized: bool = False
    ) -> None:
        super().__init__()
        self.synchronized, self.group = synchronized, None
        self.momentum, self.eps = momentum, eps

    def build(
        self, input_dim: int, backend: Backend, dtype: np.dtype, rng: np.random.Generator
    ) -> int:
        super().build(input_dim, backend, dtype, rng)
        ones = backend.asarray(np.ones(input_dim, dtype=dtype))
        self.gamma = Parameter("gamma", ones, decay=False)
        self.beta = Parameter("beta", backend.zeros((input_dim,), dtype), decay=False)
        self.running_mean = backend.zeros((input_dim,), dtype)
        self.running_var = backend.asarray(np.ones(input_dim, dtype=dtype))
        return input_dim

    def forward(self, x: Any, training: bool = True) -> Any:
        self._check_input(x)
        self.training = training
        if training and x.shape[0] < 2 and self.group is None:  # synchronized: the global batch
            raise ValueError("BatchNorm1d needs at least 2 samples per batch in training")
        self.xhat = self._buffer("xhat", x.shape)
        self.inv_std = self._buffer("inv_std", (x.shape[1],), self.dtype)  # float32 if mixed
        return self.backend.batchnorm(
            x,
            self.gamma.compute,
            self.beta.compute,
            (self.running_mean, self.running_var),
            self.momentum,
            self.eps,
            training,
            (self._buffer("out", x.shape), self.xhat, self.inv_std),
            self.group if training else None,
        )

    def backward(self, dy: Any, need_dx: bool = True) -> Any:
        return self.backend.batchnorm_backward(
            dy,
            self.xhat,
            self.inv_std,
            self.gamma.compute,
            (self.gamma.grad, self.beta.grad),
            self.training,
            self._buffer("dx", dy.shape) if need_dx else None,
            self.group if self.training else None,
        )

    def join_group(self, group: Any) -> None:
        self.group = group if self.synchronized else None

    def idle_step(self, phase: str) -> None:
        """No rows, the global statistics all the same: the running ones stay every rank's."""
        if self.group is None:
            return
        empty = self.backend.empty((0, self.input_dim), self.compute_dtype or self.dtype)
        if phase == "forward":
            self.forward(empty, training=True)
        else:
            self.backward(empty, need_dx=False)

    def plan(self) -> OpsPlan:
        return OpsPlan("BatchNorm1d", collective=self.group is not None)

    def frozen_constants(self) -> tuple:
        return (self.momentum, self.eps)

    def inference_constants(self) -> tuple[str, ...]:
        return ("eps",)

    def parameters(self) -> list[Parameter]:
        return [self.gamma, self.beta] if self.built else []

    def state_buffers(self) -> dict[str, Any]:
        if not self.built:
            return {}
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def get_config(self) -> dict:
        config = {"name": self.name, "momentum": self.momentum, "eps": self.eps}
        return {**config, "synchronized": True} if self.synchronized else config


class Standardize(Layer):
    """Fixed per-feature scaling of the inputs, ``(x - offset) / scale``, not trained: a model's
    own preprocessing (the CLI's ``--scale``), kept in its checkpoints and ONNX export, so the
    saved model takes raw features. ``Standardize.fit(X)``: zero mean, unit variance."""

    name = "standardize"

    def __init__(self, offset: Any, scale: Any) -> None:
        super().__init__()
        self.offset, self.scale = (np.array(v, np.float64).ravel() for v in (offset, scale))
        if len(self.offset) != len(self.scale) or not len(self.offset):
            raise ValueError(
                f"offset and scale need one value per feature, got "
                f"{len(self.offset)} and {len(self.scale)}"
            )
        if not (np.isfinite(self.offset).all() and np.isfinite(self.scale).all()):
            raise ValueError("offset and scale must be finite")
        if not (self.scale > 0).all():
            raise ValueError("scale must be positive")

    @classmethod
    def fit(cls, X: Any) -> Standardize:
        """Each column's mean and standard deviation in ``X`` (1 where a column is constant)."""
        X = np.asarray(host_array(X, "X"), np.float64)
        if not np.isfinite(X).all():
            raise ValueError(f"X contains {int((~np.isfinite(X)).sum())} NaN or infinite values")
        peak = np.abs(X).max(axis=0, initial=0.0)
        peak = np.where(peak > 0, peak, 1.0)  # (scaled first: squares of 1e200 overflow)
        spread = peak * (X / peak).std(axis=0)
        return cls(peak * (X / peak).mean(axis=0), np.where(spread > 0, spread, 1.0))

    def output_width(self, input_dim: int) -> int:
        if input_dim != len(self.offset):
            raise ValueError(f"Standardize has {len(self.offset)} features, the inputs {input_dim}")
        return input_dim

    def build(
        self, input_dim: int, backend: Backend, dtype: np.dtype, rng: np.random.Generator
    ) -> int:
        self.output_width(input_dim)
        with np.errstate(over="ignore", under="ignore"):
            offset, scale = self.offset.astype(dtype), self.scale.astype(dtype)
        tiny = np.finfo(dtype).tiny  # (a subnormal scale: x / scale overflows to inf)
        if not (np.isfinite(offset).all() and np.isfinite(scale).all() and (scale >= tiny).all()):
            raise ValueError(
                f"Standardize's offset and scale leave {np.dtype(dtype)}'s range (finite, "
                f"scales of {tiny:.3g} or more)"
            )
        coarse = float((np.abs(self.offset) * np.finfo(dtype).eps / self.scale).max())
        if coarse > 1e-3 and not getattr(self, "_warned", False):  # (inputs: cast before it)
            self._warned = True
            warnings.warn(
                f"Standardize in {np.dtype(dtype)}: inputs near the offset (up to "
                f"{np.abs(self.offset).max():.4g}) are rounded in steps of up to {coarse:.2g} "
                f"times the scale before they are standardized (the model casts its inputs "
                f"first): "
                + ("use dtype='float64', or " if np.dtype(dtype).itemsize < 8 else "")
                + "subtract the offset before fitting",
                RuntimeWarning,
                stacklevel=3,
            )
        self.device_offset, self.device_scale = backend.asarray(offset), backend.asarray(scale)
        return super().build(input_dim, backend, dtype, rng)

    def forward(self, x: Any, training: bool = True) -> Any:
        self._check_input(x)
        out = self._buffer("out", x.shape, x.dtype)  # first: float32
        return self.backend.standardize(x, self.device_offset, self.device_scale, out)

    def standardized(self, x: Any) -> Any:
        """``forward``'s result in a new array (inference: no buffer shared between threads)."""
        self._check_input(x)
        out = self.backend.empty(x.shape, x.dtype)
        return self.backend.standardize(x, self.device_offset, self.device_scale, out)

    def backward(self, dy: Any, need_dx: bool = True) -> Any:
        if not need_dx:
            return None
        dx = self._buffer("dx", dy.shape, dy.dtype)
        return self.backend.standardize_backward(dy, self.device_scale, dx)

    def plan(self) -> OpsPlan:
        return OpsPlan("Standardize")

    def get_config(self) -> dict:
        return {"name": self.name, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    def __repr__(self) -> str:
        return f"Standardize({len(self.offset)} features)"


def registered(layer: Layer) -> Layer:
    """``layer``, refused where its config would not load it as it is
    (``Registry.checked_config``)."""
    LAYERS.checked_config(layer)
    return layer


def layer_from_config(config: dict) -> Layer:
    config = dict(config)
    trainable = config.pop("trainable", True)  # (the model's config holds it when False)
    optimizer = config.pop("optimizer", None)  # (any layer's own, as the model saves it)
    layer = LAYERS.lookup(config.get("name")).from_config(config)
    layer.trainable = trainable
    if optimizer is not None:
        layer.optimizer = optimizer_from_config(optimizer)
    return layer


LAYERS.load = layer_from_config

"""Optimizers: SGD, Momentum (optionally Nesterov), AdaGrad, RMSProp, Adam, AdamW; L2 or
decoupled weight decay; gradient clipping by global norm (``clip_norm``) or value
(``clip_value``) on every optimizer. The global norm is over all of the model's gradients, also
where layers have optimizers of their own (Keras's ``global_clipnorm``; clipping each layer by
its own norm, as PyTorch's ``clip_grad_norm_(layer.parameters())`` would, is not offered).

``weight_decay=λ`` (L2; AdamW's is decoupled) adds ``λ W`` to the weights' gradient after
clipping, the gradient of ``0.5 λ ||W||²`` (biases and BatchNorm parameters are not decayed);
the loss that ``fit``, ``evaluate`` and ``model.loss`` report excludes that penalty (the
notebooks' MultiLayerNet adds it to its loss). The notebooks' class names ``Adagrad`` and
``RMSprop`` are aliases in ``fastnet``; their ``Nesterov`` is ``Momentum(nesterov=True)``.

An optimizer holds hyperparameters and its rule; its state slots live in the model's parameter
arena (``fastnet.parameter``), so one optimizer object can be shared by a whole model or injected
into a single layer (as in the notebooks' FC layers). Each step is one fused ``Backend.update``
call over a whole flat group, with weight decay on the group's leading ``n_decay`` elements.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fastnet.parameter import ParameterGroup
from fastnet.registry import Registry, construct
from fastnet.revision import bump
from fastnet.validation import check_flag, check_fraction, check_number


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> float:
    return check_number(value, name, 0, opened="" if allow_zero else "low")


#: optimizer classes by ``name`` (a subclass with a ``name`` of its own registers itself)
OPTIMIZERS = Registry("optimizer")
#: Keras's attribute names of fastnet's hyperparameters
KERAS_NAMES = {
    "learning_rate": "lr",
    "beta_1": "beta1",
    "beta_2": "beta2",
    "epsilon": "eps",
    "global_clipnorm": "clip_norm",
    "clipvalue": "clip_value",
}
#: Keras's clipnorm clips each weight's gradient by its own norm: no fastnet hyperparameter
PER_WEIGHT_CLIPNORM = (
    "Keras's clipnorm clips each weight's gradient by its own norm; fastnet's clip_norm clips "
    "the global norm of all of them (Keras's global_clipnorm, PyTorch's clip_grad_norm_)"
)


#: names fastnet's constructors take for their own (the notebooks' RMSprop ``decay_rate``)
OTHER_NAMES = {**KERAS_NAMES, "decay_rate": "rho"}
_BASE_ARGUMENTS = ("lr", "weight_decay", "clip_norm", "clip_value")


def _taking_other_names(init: Callable) -> Callable:
    """``init`` taking Keras's (``learning_rate``, ``beta_1``, ``epsilon``, ...) and the
    notebooks' keyword names for its own arguments, where it has them (not a name ``init``
    takes itself; not ``epsilon``, which Keras places elsewhere than ``eps``)."""
    params = inspect.signature(init).parameters
    more = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    taken = {
        k: v
        for k, v in OTHER_NAMES.items()
        if (v in params or (more and v in _BASE_ARGUMENTS)) and k not in params and k != "epsilon"
    }

    @functools.wraps(init)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        for other in [k for k in kwargs if k in taken]:
            if taken[other] in kwargs:
                raise TypeError(
                    f"{other} (another name of {taken[other]}) and {taken[other]}: give one"
                )
            kwargs[taken[other]] = kwargs.pop(other)
        init(self, *args, **kwargs)

    return wrapped


def _overrides_update(update: Callable) -> bool:
    """Whether ``update`` takes ``Optimizer.update``'s (self, group, backend), not the
    notebooks' (params, grads) or (layer)."""
    signature = inspect.signature(update)
    try:
        signature.bind(None, None, None)
    except TypeError:
        return False
    return not {"params", "grads"} & set(signature.parameters)


class Optimizer:
    """One update rule: hyperparameters and the rule itself, described once.

    ``slots`` names the per-element state the rule keeps (in the parameter arena, so one
    optimizer can serve a whole model or a single layer). ``constants()`` are the per-element
    kernel's constant arguments, in kernel order, and ``derived_constants()`` what the kernels
    need that derives from them (``1 - beta``), computed in float64 on the host; ``reference``
    is the rule in NumPy (the published update, the ground truth for every kernel, deriving
    its own from the Python floats); ``kernel`` names the fused kernels
    (``fastnet.kernels.numba_cpu.<kernel>_update``, ``fastnet.kernels.cupy_gpu.UPDATE_RULES``).
    A new rule is a subclass here plus, for speed, one kernel per kernel module. A subclass
    with its own ``reference`` and no ``kernel`` of its own runs ``reference`` on every
    backend (not its parent's fused kernels); ``name`` in its class body registers it, for
    saving and loading.

    The learning rate and everything derived from the step count live on the device in the
    parameter group's ``scalars`` (``fastnet.parameter``); the backend's ``advance_scalars``
    computes them inside the step from ``scalar_constants()``, so no host value is frozen into
    a captured step.
    """

    name = "optimizer"
    kernel = ""
    slots: tuple[str, ...] = ()
    #: slots that are sums or averages of squares (must stay >= 0 when loaded)
    nonnegative_slots: tuple[str, ...] = ()
    #: weight decay decoupled from the gradient (AdamW) instead of an L2 term in it
    decoupled = False
    #: Adam's bias correction of the step size and eps (from beta1, beta2 and the step count)
    bias_correction = False
    eps = 0.0
    beta1 = beta2 = 0.0
    #: the lr a schedule scales (set by the first that runs, kept while only schedules change
    #: lr, saved in the config: a resumed fit's schedule starts from it); None: lr now
    initial_lr: float | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        update = cls.__dict__.get("update")
        if callable(update) and not _overrides_update(update):
            raise TypeError(
                f"{cls.__name__}.update{inspect.signature(update)} is the notebooks' form, not "
                "update(self, group, backend): a fastnet optimizer implements reference(self, "
                "xp, p, g, slots, step, eps, constants), the update of one flat parameter group "
                "in place (see SGD, Adam)"
            )
        OPTIMIZERS.register(cls)
        if "__init__" in cls.__dict__:
            cls.__init__ = _taking_other_names(cls.__dict__["__init__"])  # type: ignore[method-assign]
        if "reference" in cls.__dict__ and "kernel" not in cls.__dict__:
            cls.kernel = ""  # a rule of its own: the parent's fused kernels compute another

    def __init__(
        self,
        lr: float,
        weight_decay: float = 0.0,
        *,
        clip_norm: float | None = None,
        clip_value: float | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:  # the notebooks' and Keras's names get theirs
            key = next(iter(unknown))
            own = [*inspect.signature(type(self)).parameters, *_BASE_ARGUMENTS]
            named = key in OTHER_NAMES and OTHER_NAMES[key] in own  # (AdaGrad has no rho)
            hint = f": fastnet calls it {OTHER_NAMES[key]!r}" if named else ""
            hint = f": {PER_WEIGHT_CLIPNORM}" if key == "clipnorm" else hint
            hint = ": SGD with momentum is fn.Momentum(lr, momentum)" if key == "momentum" else hint
            betas = key == "betas" and "beta1" in inspect.signature(type(self)).parameters
            hint = ": PyTorch's betas=(b1, b2) are beta1=b1, beta2=b2" if betas else hint
            if key == "epsilon":
                hint = (
                    ": Keras's epsilon is not placed as fastnet's eps (PyTorch's, added to "
                    "the square root); Adam's is the paper's epsilon hat, fn.Adam(eps=..., "
                    "eps_hat=True): pass eps="
                )
            raise TypeError(
                f"{type(self).__name__} got an unexpected keyword argument {key!r}{hint}"
            )
        self.lr = lr
        self.weight_decay = weight_decay
        self.clip_norm, self.clip_value = clip_norm, clip_value

    def __setattr__(self, key: str, value: Any) -> None:
        """Checked also when set on a built model: ``lr`` (set by hand, schedules start from
        it), ``weight_decay``, ``clip_norm`` and ``clip_value`` (None or positive), ``beta1``,
        ``beta2``, ``rho``, ``momentum`` (in [0, 1)), ``eps`` (positive), ``nesterov`` and
        ``eps_hat`` (True or False). Keras's
        names (``learning_rate``, ``beta_1``, ``epsilon``, ...) set fastnet's."""
        key = KERAS_NAMES.get(key, key)
        if key == "clipnorm":  # (a plain attribute would be ignored, silently)
            raise AttributeError(PER_WEIGHT_CLIPNORM)
        if key == "lr":
            value = _check_positive("lr", value)
            super().__setattr__("initial_lr", None)
        elif key == "weight_decay":
            value = _check_positive(key, value, allow_zero=True)
        elif key in ("initial_lr", "clip_norm", "clip_value") and value is not None:
            value = _check_positive(key, value)
        elif key in ("beta1", "beta2", "rho", "momentum"):  # (beta1 = 1 divided by zero)
            value = check_fraction(key)(value)
        elif key == "eps":
            value = _check_positive(key, value)
        elif key in ("nesterov", "eps_hat"):
            value = check_flag(value, key)
        super().__setattr__(key, value)
        if key not in ("lr", "initial_lr"):  # (the lr lives in device scalars)
            bump()

    def __getattr__(self, key: str) -> Any:  # (only for names that are not attributes)
        if key in KERAS_NAMES:
            return getattr(self, KERAS_NAMES[key])
        hint = f": {PER_WEIGHT_CLIPNORM}" if key == "clipnorm" else ""
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}{hint}")

    def schedule_base(self) -> float:
        """The lr a schedule scales: ``initial_lr``, set to the lr now if there is none."""
        if self.initial_lr is None:
            self.initial_lr = self.lr  # (checked: a schedule scales an lr above 0)
        return self.initial_lr  # type: ignore[return-value]

    def set_scheduled_lr(self, lr: float) -> None:
        """Set ``lr`` as a schedule does (``initial_lr`` is kept; 0 pauses, as Keras allows)."""
        lr = lr if isinstance(lr, int) else float(lr)  # (a 0-d array; 10**400 as it is)
        object.__setattr__(self, "lr", _check_positive("lr", lr, allow_zero=True))

    def constants(self) -> tuple[float, ...]:
        """The per-element kernel's constant arguments (after the slots), in kernel order."""
        return ()

    def derived_constants(self, constants: tuple) -> tuple[float, ...]:
        """Values the fused kernels need that derive from ``constants`` (``1 - beta``),
        computed here in float64; backends round them once to the parameters' dtype, as they
        round ``constants``. Computed in float32 from a rounded ``beta`` instead, ``1 - beta``
        would be off by up to ``3e-8 / (1 - beta)`` relative (1.4e-3 for ``beta2 = 0.99999``:
        Adam's steps off by 7e-4, their bias correction using the exact ``beta2``). numba's
        kernels take them after their other arguments (``..., clip, tiny, *derived``), CUDA's
        right after ``constants``."""
        return ()

    def scalar_constants(self) -> tuple[float, ...]:
        """What ``Backend.advance_scalars`` needs besides the device scalars: ``(eps, beta1,
        beta2, bias_correction, decoupled weight decay, clip_norm or 0)``; bias_correction 1
        corrects the step size and eps, 2 the step size only (``eps_hat``)."""
        return (
            float(self.eps),
            float(self.beta1),
            float(self.beta2),
            2.0 if getattr(self, "eps_hat", False) else float(self.bias_correction),
            self.weight_decay if self.decoupled else 0.0,
            self.clip_norm or 0.0,
        )

    def update(self, group: ParameterGroup, backend: Any = None) -> None:
        """One fused update of ``group`` (its scalars already advanced for this step).
        Gradients are scaled by the device clip scale (``clip_norm``: ``min(1, clip_norm /
        (norm + 1e-6))``, as PyTorch's ``clip_grad_norm_``), clipped to ``[-clip_value,
        clip_value]``, and get L2 decay on the group's leading ``n_decay`` elements."""
        if not isinstance(group, ParameterGroup) or backend is None:  # (also update(layer))
            raise TypeError(
                "an optimizer updates a model's parameters: call model.apply_gradients() after "
                "model.backward (the notebooks' optimizer.update(params, grads) or update(layer))"
            )
        backend.update(
            self,
            group.values,
            group.grads,
            tuple(group.slots[key] for key in self.slots),
            group.scalars,
            self.constants(),
            group.n_decay,
            0.0 if self.decoupled else self.weight_decay,
            self.clip_value,
            None if group.compute is group.values else group.compute,
        )

    def reference(
        self, xp: Any, p: Any, g: Any, slots: tuple, step: Any, eps: Any, constants: tuple
    ) -> None:
        """The rule in NumPy, in place: ``g`` is the effective gradient, ``step`` the step
        size (bias-corrected where the rule corrects) and ``eps`` its epsilon, both in the
        parameters' dtype."""
        raise NotImplementedError(
            f"{type(self).__name__}.reference(xp, p, g, slots, step, eps, constants), the "
            "update in place, is not implemented"
        )

    def get_config(self) -> dict:
        config = {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay}
        if self.clip_norm is not None:
            config["clip_norm"] = self.clip_norm
        if self.clip_value is not None:
            config["clip_value"] = self.clip_value
        if self.initial_lr is not None:
            config["initial_lr"] = self.initial_lr
        return config

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


Optimizer.__init__ = _taking_other_names(Optimizer.__init__)  # type: ignore[method-assign]


class SGD(Optimizer):
    """Plain stochastic gradient descent: ``p -= lr * g``."""

    name = kernel = "sgd"

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0, **clipping: Any) -> None:
        super().__init__(lr, weight_decay, **clipping)

    def reference(
        self, xp: Any, p: Any, g: Any, slots: tuple, step: Any, eps: Any, constants: tuple
    ) -> None:
        p -= step * g


class Momentum(Optimizer):
    """SGD with momentum, ``v = momentum * v - lr * g; w += v`` (Keras's and the notebooks'
    form: the same steps as PyTorch's ``v = momentum * v + g; w -= lr * v`` while ``lr`` is
    constant, not once a schedule changes it). ``nesterov=True`` gives Nesterov accelerated
    gradient, ``w += momentum * v - lr * g`` (the notebooks' ``Nesterov`` class)."""

    name = kernel = "momentum"
    slots = ("velocity",)

    def __init__(
        self,
        lr: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        **clipping: Any,
    ) -> None:
        super().__init__(lr, weight_decay, **clipping)
        self.momentum = check_fraction("momentum")(momentum)
        self.nesterov = check_flag(nesterov, "nesterov")

    def constants(self) -> tuple[float, ...]:
        return (self.momentum, float(self.nesterov))

    def reference(
        self, xp: Any, p: Any, g: Any, slots: tuple, step: Any, eps: Any, constants: tuple
    ) -> None:
        (v,), (mu, nesterov) = slots, constants
        v *= mu
        v -= step * g
        if nesterov:
            p += mu * v - step * g
        else:
            p += v

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class AdaGrad(Optimizer):
    """AdaGrad: the squared-gradient accumulator starts at 0; ``eps`` guards the division."""

    name = kernel = "adagrad"
    slots = nonnegative_slots = ("sum_sq",)

    def __init__(
        self, lr: float = 0.01, eps: float = 1e-7, weight_decay: float = 0.0, **clipping: Any
    ) -> None:
        super().__init__(lr, weight_decay, **clipping)
        self.eps = _check_positive("eps", eps)

    def reference(
        self, xp: Any, p: Any, g: Any, slots: tuple, step: Any, eps: Any, constants: tuple
    ) -> None:
        (h,) = slots
        h += g * g
        p -= step * g / (xp.sqrt(h) + eps)

    def get_config(self) -> dict:
        return {**super().get_config(), "eps": self.eps}


class RMSProp(Optimizer):
    """RMSProp with decay ``rho`` of the squared-gradient average (alias ``fn.RMSprop``).
    ``rho`` is the notebooks' ``decay_rate``; their defaults are lr 0.01 and decay_rate 0.99."""

    name = kernel = "rmsprop"
    slots = nonnegative_slots = ("mean_sq",)

    def __init__(
        self,
        lr: float = 0.001,
        rho: float = 0.9,
        eps: float = 1e-7,
        weight_decay: float = 0.0,
        **clipping: Any,
    ) -> None:
        super().__init__(lr, weight_decay, **clipping)
        self.rho = check_fraction("rho")(rho)
        self.eps = _check_positive("eps", eps)

    def constants(self) -> tuple[float, ...]:
        return (self.rho,)

    def derived_constants(self, constants: tuple) -> tuple[float, ...]:
        return tuple(1.0 - c for c in constants)  # 1 - rho

    def reference(
        self, xp: Any, p: Any, g: Any, slots: tuple, step: Any, eps: Any, constants: tuple
    ) -> None:
        (h,), (rho,) = slots, constants
        h *= rho
        h += (1 - rho) * g * g
        p -= step * g / (xp.sqrt(h) + eps)

    def get_config(self) -> dict:
        return {**super().get_config(), "rho": self.rho, "eps": self.eps}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba 2015), folded into the step size and eps
    (sec. 2): ``p -= lr_t * m / (sqrt(v) + eps_t)`` with ``lr_t = lr sqrt(1 - beta2^t) /
    (1 - beta1^t)`` and ``eps_t = eps sqrt(1 - beta2^t)``: eps is added to the corrected
    ``sqrt(v_hat)`` (Algorithm 1, PyTorch's). ``eps_hat=True``: ``eps_t = eps``, added to the
    uncorrected ``sqrt(v)`` (the paper's epsilon hat: Keras's, scikit-learn's, the notebooks')."""

    name = kernel = "adam"
    slots = ("m", "v")
    nonnegative_slots = ("v",)
    bias_correction = True

    def __init__(
        self,
        lr: float = 0.001,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        eps_hat: bool = False,
        **clipping: Any,
    ) -> None:
        super().__init__(lr, weight_decay, **clipping)
        self.beta1 = check_fraction("beta1")(beta1)
        self.beta2 = check_fraction("beta2")(beta2)
        self.eps = _check_positive("eps", eps)
        self.eps_hat = check_flag(eps_hat, "eps_hat")

    def constants(self) -> tuple[float, ...]:
        return (self.beta1, self.beta2)

    def derived_constants(self, constants: tuple) -> tuple[float, ...]:
        return tuple(1.0 - c for c in constants)  # 1 - beta1, 1 - beta2

    def reference(
        self, xp: Any, p: Any, g: Any, slots: tuple, step: Any, eps: Any, constants: tuple
    ) -> None:
        (m, v), (beta1, beta2) = slots, constants
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        g2 = g * g
        g2 *= 1 - beta2  # (1 - beta2) * g * g, in the kernels' order: the backends agree
        v += g2
        den = xp.sqrt(v)  # in place below: three temporaries fewer, the same values
        den += eps
        p -= xp.divide(xp.multiply(m, step, out=g2), den, out=den)

    def get_config(self) -> dict:
        config = {**super().get_config(), "beta1": self.beta1, "beta2": self.beta2}
        return {**config, "eps": self.eps, **({"eps_hat": True} if self.eps_hat else {})}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), PyTorch semantics: each
    step first shrinks decayed parameters by ``1 - lr * weight_decay``, then takes the Adam
    step on the undecayed gradient. Biases and BatchNorm parameters are not decayed."""

    name = "adamw"
    decoupled = True

    def __init__(
        self,
        lr: float = 0.001,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        **clipping: Any,
    ) -> None:
        super().__init__(lr, beta1, beta2, eps, weight_decay, **clipping)


class Nesterov(Momentum):
    """The notebooks' ``Nesterov``: ``Momentum(nesterov=True)`` (saved and loaded as that)."""

    saved_as_parent = True

    def __init__(
        self, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0, **clipping: Any
    ) -> None:
        super().__init__(lr, momentum, True, weight_decay, **clipping)

    def __repr__(self) -> str:
        return "Momentum" + super().__repr__().removeprefix("Nesterov")  # what it loads as


OPTIMIZERS["nesterov"] = Nesterov


def get_optimizer(spec: str | Optimizer, **kwargs: Any) -> Optimizer:
    """Resolve an optimizer name (with hyperparameters as keywords) or pass an instance through."""
    if isinstance(spec, Optimizer):
        return spec
    name = spec.lower() if isinstance(spec, str) and spec not in OPTIMIZERS else spec
    return OPTIMIZERS.lookup(name)(**kwargs)


def optimizer_from_config(config: dict) -> Optimizer:
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise TypeError(f"optimizer config must be a dict with a 'name', got {config!r}")
    config = dict(config)
    initial_lr, lr = config.pop("initial_lr", None), config.get("lr")
    paused = lr == 0 and not isinstance(lr, bool)  # a schedule's lr 0, saved
    name = config.pop("name")
    cls = OPTIMIZERS.lookup(name if name in OPTIMIZERS else name.lower())
    optimizer = construct(  # (lr 0 is a schedule's, set below: not the class's to restore)
        cls, {**config, **({"lr": 1.0} if paused else {})}, ("lr",) if paused else ()
    )
    if paused:
        optimizer.set_scheduled_lr(0.0)
    optimizer.initial_lr = initial_lr
    return optimizer


OPTIMIZERS.load = optimizer_from_config
OPTIMIZERS.foreign_hint = lambda obj: (
    "a notebook's optimizer (update(layer)) is a fastnet rule of the same lr: fn.SGD(lr), "
    "fn.Momentum(lr), fn.AdaGrad(lr), fn.RMSProp(lr), fn.Adam(lr)"
    if callable(getattr(obj, "update", None)) and not isinstance(obj, dict | set)
    else ""
)

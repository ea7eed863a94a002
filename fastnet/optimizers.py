"""Optimizers: SGD, Momentum (optionally Nesterov), AdaGrad, RMSProp, Adam, AdamW; L2 or
decoupled weight decay; gradient clipping by global norm (``clip_norm``) or value
(``clip_value``) on every optimizer.

An optimizer holds hyperparameters only; its state slots live in the model's parameter arena
(``fastnet.parameter``), so one optimizer object can be shared by a whole model or injected into
a single layer (as in the notebooks' FC layers). Each step is one fused ``update_*`` backend call
over a whole flat group, with weight decay on the group's leading ``n_decay`` elements.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from fastnet.parameter import ParameterGroup


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> float:
    ok = _is_real(value) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _check_fraction(name: str, value: Any) -> float:
    if not (_is_real(value) and 0 <= value < 1):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


class Optimizer:
    """Hyperparameters of one update rule. ``slots`` names the per-element state it keeps;
    ``apply`` updates a whole ``ParameterGroup`` (flat arena) with one fused backend call."""

    name = "optimizer"
    slots: tuple[str, ...] = ()
    #: slots that are sums or averages of squares (must stay >= 0 when loaded)
    nonnegative_slots: tuple[str, ...] = ()

    #: weight decay decoupled from the gradient (AdamW) instead of an L2 term in it
    decoupled = False

    def __init__(
        self,
        lr: float,
        weight_decay: float = 0.0,
        *,
        clip_norm: float | None = None,
        clip_value: float | None = None,
    ) -> None:
        self.lr = _check_positive("lr", lr)
        self.weight_decay = _check_positive("weight_decay", weight_decay, allow_zero=True)
        self.clip_norm = None if clip_norm is None else _check_positive("clip_norm", clip_norm)
        self.clip_value = None if clip_value is None else _check_positive("clip_value", clip_value)

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "lr":  # schedules assign it: keep it a positive finite float
            value = _check_positive("lr", value)
        super().__setattr__(key, value)

    def apply(
        self,
        group: ParameterGroup,
        backend: Any,
        device_scalars: Any = None,
        total_sq: float | None = None,
    ) -> None:
        """One step over ``group``: ``group.step`` is incremented first (Adam's ``t``).
        ``total_sq`` is the squared L2 norm of all gradients of the arena (for ``clip_norm``:
        gradients are scaled by ``min(1, clip_norm / (norm + 1e-6))``, as PyTorch's
        ``clip_grad_norm_``); ``clip_value`` then clips each gradient to ``[-v, v]``."""
        group.step += 1
        scale = 1.0
        if self.clip_norm is not None and total_sq is not None:
            scale = min(1.0, self.clip_norm / (math.sqrt(total_sq) + 1e-6))
        l2 = 0.0 if self.decoupled else self.weight_decay
        shrink = 1.0 - self.lr * self.weight_decay if self.decoupled else 1.0
        self._update(group, backend, device_scalars, (l2, group.n_decay, scale, self.clip_value,
                                                      shrink))

    def _update(
        self, group: ParameterGroup, backend: Any, device_scalars: Any, common: tuple
    ) -> None:
        raise NotImplementedError

    def get_config(self) -> dict:
        config = {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay}
        if self.clip_norm is not None:
            config["clip_norm"] = self.clip_norm
        if self.clip_value is not None:
            config["clip_value"] = self.clip_value
        return config

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Plain stochastic gradient descent: ``p -= lr * g``."""

    name = "sgd"

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0, **clipping: Any) -> None:
        super().__init__(lr, weight_decay, **clipping)

    def _update(
        self, group: ParameterGroup, backend: Any, device_scalars: Any, common: tuple
    ) -> None:
        backend.update_sgd(group.values, group.grads, self.lr, *common)


class Momentum(Optimizer):
    """SGD with momentum; ``nesterov=True`` gives Nesterov accelerated gradient."""

    name = "momentum"
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
        self.momentum = _check_fraction("momentum", momentum)
        self.nesterov = bool(nesterov)

    def _update(
        self, group: ParameterGroup, backend: Any, device_scalars: Any, common: tuple
    ) -> None:
        backend.update_momentum(group.values, group.grads, group.slots["velocity"], self.lr,
                                self.momentum, self.nesterov, *common)

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class AdaGrad(Optimizer):
    """AdaGrad: the squared-gradient accumulator starts at 0; ``eps`` guards the division."""

    name = "adagrad"
    slots = nonnegative_slots = ("sum_sq",)

    def __init__(
        self, lr: float = 0.01, eps: float = 1e-7, weight_decay: float = 0.0, **clipping: Any
    ) -> None:
        super().__init__(lr, weight_decay, **clipping)
        self.eps = _check_positive("eps", eps)

    def _update(
        self, group: ParameterGroup, backend: Any, device_scalars: Any, common: tuple
    ) -> None:
        backend.update_adagrad(
            group.values, group.grads, group.slots["sum_sq"], self.lr, self.eps, *common
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "eps": self.eps}


class RMSProp(Optimizer):
    """RMSProp with decay ``rho`` of the squared-gradient average."""

    name = "rmsprop"
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
        self.rho = _check_fraction("rho", rho)
        self.eps = _check_positive("eps", eps)

    def _update(
        self, group: ParameterGroup, backend: Any, device_scalars: Any, common: tuple
    ) -> None:
        backend.update_rmsprop(group.values, group.grads, group.slots["mean_sq"], self.lr,
                               self.rho, self.eps, *common)

    def get_config(self) -> dict:
        return {**super().get_config(), "rho": self.rho, "eps": self.eps}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba 2015)."""

    name = "adam"
    slots = ("m", "v")
    nonnegative_slots = ("v",)

    def __init__(
        self,
        lr: float = 0.001,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        **clipping: Any,
    ) -> None:
        super().__init__(lr, weight_decay, **clipping)
        self.beta1 = _check_fraction("beta1", beta1)
        self.beta2 = _check_fraction("beta2", beta2)
        self.eps = _check_positive("eps", eps)

    def _update(
        self, group: ParameterGroup, backend: Any, device_scalars: Any, common: tuple
    ) -> None:
        wd, n_decay, scale, clip_value, shrink = common
        backend.update_adam(group.values, group.grads, group.slots["m"], group.slots["v"],
                            self.lr, self.beta1, self.beta2, self.eps, group.step, wd, n_decay,
                            device_scalars, scale, clip_value, shrink)

    def get_config(self) -> dict:
        return {**super().get_config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


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


OPTIMIZERS = {cls.name: cls for cls in (SGD, Momentum, AdaGrad, RMSProp, Adam, AdamW)}


def get_optimizer(spec: str | Optimizer, **kwargs: Any) -> Optimizer:
    """Resolve an optimizer name (with hyperparameters as keywords) or pass an instance through."""
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, str) and spec.lower() in OPTIMIZERS:
        return OPTIMIZERS[spec.lower()](**kwargs)
    raise ValueError(f"unknown optimizer {spec!r}; expected one of {', '.join(OPTIMIZERS)}")


def optimizer_from_config(config: dict) -> Optimizer:
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise TypeError(f"optimizer config must be a dict with a 'name', got {config!r}")
    config = dict(config)
    return get_optimizer(config.pop("name"), **config)

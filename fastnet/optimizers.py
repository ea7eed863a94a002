"""Optimizers: SGD, Momentum (optionally Nesterov), AdaGrad, RMSProp, Adam; L2 weight decay.

An optimizer holds hyperparameters only; each ``Parameter`` keeps its own state slots, so one
optimizer object can be shared by a whole model or injected into a single layer (as in the
notebooks' FC layers). Updates run through the backend's (fused) ``update_*`` kernels.
"""

from __future__ import annotations

import math
from typing import Any

from fastnet.parameter import Parameter


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _check_fraction(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


class Optimizer:
    name = "optimizer"

    def __init__(self, lr: float, weight_decay: float = 0.0) -> None:
        self.lr = _check_positive("lr", lr)
        self.weight_decay = _check_positive("weight_decay", weight_decay, allow_zero=True)

    def _wd(self, param: Parameter) -> float:
        return self.weight_decay if param.decay else 0.0

    def _slot(self, param: Parameter, key: str, backend: Any) -> Any:
        slot = param.state.get(key)
        if slot is None:
            slot = param.state[key] = backend.zeros(param.value.shape, param.value.dtype)
        return slot

    def update(self, param: Parameter, backend: Any) -> None:
        """Apply one step to ``param.value`` using ``param.grad``."""
        param.step += 1
        self._update(param, backend)

    def _update(self, param: Parameter, backend: Any) -> None:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Plain stochastic gradient descent: ``p -= lr * g``."""

    name = "sgd"

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)

    def _update(self, param: Parameter, backend: Any) -> None:
        backend.update_sgd(param.value, param.grad, self.lr, self._wd(param))


class Momentum(Optimizer):
    """SGD with momentum; ``nesterov=True`` gives Nesterov accelerated gradient."""

    name = "momentum"

    def __init__(
        self,
        lr: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr, weight_decay)
        self.momentum = _check_fraction("momentum", momentum)
        self.nesterov = bool(nesterov)

    def _update(self, param: Parameter, backend: Any) -> None:
        v = self._slot(param, "velocity", backend)
        backend.update_momentum(
            param.value, param.grad, v, self.lr, self.momentum, self.nesterov, self._wd(param)
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class AdaGrad(Optimizer):
    """AdaGrad: the squared-gradient accumulator starts at 0; ``eps`` guards the division."""

    name = "adagrad"

    def __init__(self, lr: float = 0.01, eps: float = 1e-7, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        self.eps = _check_positive("eps", eps)

    def _update(self, param: Parameter, backend: Any) -> None:
        h = self._slot(param, "sum_sq", backend)
        backend.update_adagrad(param.value, param.grad, h, self.lr, self.eps, self._wd(param))

    def get_config(self) -> dict:
        return {**super().get_config(), "eps": self.eps}


class RMSProp(Optimizer):
    """RMSProp with decay ``rho`` of the squared-gradient average."""

    name = "rmsprop"

    def __init__(
        self, lr: float = 0.001, rho: float = 0.9, eps: float = 1e-7, weight_decay: float = 0.0
    ) -> None:
        super().__init__(lr, weight_decay)
        self.rho = _check_fraction("rho", rho)
        self.eps = _check_positive("eps", eps)

    def _update(self, param: Parameter, backend: Any) -> None:
        h = self._slot(param, "mean_sq", backend)
        backend.update_rmsprop(
            param.value, param.grad, h, self.lr, self.rho, self.eps, self._wd(param)
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "rho": self.rho, "eps": self.eps}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba 2015)."""

    name = "adam"

    def __init__(
        self,
        lr: float = 0.001,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr, weight_decay)
        self.beta1 = _check_fraction("beta1", beta1)
        self.beta2 = _check_fraction("beta2", beta2)
        self.eps = _check_positive("eps", eps)

    def _update(self, param: Parameter, backend: Any) -> None:
        m = self._slot(param, "m", backend)
        v = self._slot(param, "v", backend)
        backend.update_adam(
            param.value,
            param.grad,
            m,
            v,
            self.lr,
            self.beta1,
            self.beta2,
            self.eps,
            param.step,
            self._wd(param),
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


OPTIMIZERS = {cls.name: cls for cls in (SGD, Momentum, AdaGrad, RMSProp, Adam)}


def get_optimizer(spec: str | Optimizer, **kwargs: Any) -> Optimizer:
    """Resolve an optimizer name (with hyperparameters as keywords) or pass an instance through."""
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, str) and spec.lower() in OPTIMIZERS:
        return OPTIMIZERS[spec.lower()](**kwargs)
    raise ValueError(f"unknown optimizer {spec!r}; expected one of {', '.join(OPTIMIZERS)}")


def optimizer_from_config(config: dict) -> Optimizer:
    config = dict(config)
    return get_optimizer(config.pop("name"), **config)

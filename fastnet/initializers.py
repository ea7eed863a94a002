"""Weight initializers: ``Gaussian(sigma)``, ``Xavier`` (Glorot) and ``He``.

The notebooks' ``XavierInitializer`` draws with std ``sqrt(1 / fan_in)`` (LeCun normal); the
``fn.XavierInitializer`` alias is Glorot's ``Xavier`` below, ``sqrt(2 / (fan_in + fan_out))``.
fastnet has no LeCun initializer: for the notebooks' draw give each ``Dense`` its own
``Gaussian(sigma=(1 / fan_in) ** 0.5)``, ``fan_in`` being that layer's input width.

Each is called as ``init(rng, fan_in, fan_out, dtype)`` and returns a NumPy array; the layer
moves it to its backend. Biases start at zero.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastnet.registry import Registry, construct
from fastnet.validation import is_real

#: initializer classes by ``name`` (a subclass with a ``name`` of its own registers itself)
INITIALIZERS = Registry("initializer")


class Initializer:
    """Base class: ``scale(fan_in, fan_out)`` is the normal draw's standard deviation, or
    ``__call__`` draws the ``(fan_in, fan_out)`` array itself; ``name`` in a subclass's body
    registers it, for saving and loading."""

    name = "initializer"
    chosen_by_default = False  # True when Dense picked it (no initializer given)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        INITIALIZERS.register(cls)

    def scale(self, fan_in: int, fan_out: int) -> float:
        raise NotImplementedError(
            f"{type(self).__name__}.scale(fan_in, fan_out) -> standard deviation (or "
            "__call__(rng, fan_in, fan_out, dtype) -> array) is not implemented"
        )

    def __call__(
        self,
        rng: np.random.Generator,
        fan_in: int,
        fan_out: int,
        dtype: Any = np.float32,
    ) -> np.ndarray:
        std = self.scale(fan_in, fan_out)
        return (rng.standard_normal((fan_in, fan_out)) * std).astype(dtype)

    def get_config(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Gaussian(Initializer):
    """Normal with a fixed standard deviation ``sigma`` (the notebooks' SimpleInitializer)."""

    name = "gaussian"

    def __init__(self, sigma: float = 0.01) -> None:
        if not (is_real(sigma) and math.isfinite(sigma) and sigma > 0):  # (np.float32 too)
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        self.sigma = float(sigma)

    def scale(self, fan_in: int, fan_out: int) -> float:
        return self.sigma

    def get_config(self) -> dict:
        return {**super().get_config(), "sigma": self.sigma}


class Xavier(Initializer):
    """Glorot normal: std = sqrt(2 / (fan_in + fan_out)); suits sigmoid and tanh (not the
    notebooks' XavierInitializer, sqrt(1 / fan_in): see the module docstring)."""

    name = "xavier"

    def scale(self, fan_in: int, fan_out: int) -> float:
        return math.sqrt(2.0 / (fan_in + fan_out))


class He(Initializer):
    """He normal: std = sqrt(2 / fan_in); suits ReLU."""

    name = "he"

    def scale(self, fan_in: int, fan_out: int) -> float:
        return math.sqrt(2.0 / fan_in)


def get_initializer(spec: str | Initializer | None, activation: str | None) -> Initializer:
    """Resolve a name or instance; None picks He for ReLU-like activations, else Xavier."""
    if isinstance(spec, Initializer):
        return spec
    if spec is None:
        init = He() if activation in ("relu", "leaky_relu") else Xavier()
        init.chosen_by_default = True
        return init
    name = spec.lower() if isinstance(spec, str) and spec not in INITIALIZERS else spec
    return INITIALIZERS.lookup(name)()


def initializer_from_config(config: dict | str) -> Initializer:
    if not isinstance(config, dict | str):
        raise TypeError(f"an initializer config is a dict with a 'name' or a name, got {config!r}")
    config = {"name": config} if isinstance(config, str) else dict(config)
    return construct(INITIALIZERS.lookup(config.pop("name")), config)


INITIALIZERS.load = initializer_from_config
INITIALIZERS.foreign_hint = lambda obj: (
    "a notebook's initializer (W()/B() methods) is fn.Gaussian(sigma) (SimpleInitializer), "
    "fn.Xavier() or fn.He() (or a subclass of fastnet.initializers.Initializer)"
    if callable(getattr(obj, "W", None))
    else ""
)

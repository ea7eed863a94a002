"""``mlp``: the multi-layer perceptron that the CLI, the estimators and the benchmark train."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fastnet.backends import Backend
from fastnet.backends.base import Act, activation_code
from fastnet.layers import LAYERS, BatchNorm1d, Dense, Dropout, Layer
from fastnet.losses import Loss
from fastnet.model import Sequential
from fastnet.optimizers import Optimizer


def mlp_layers(
    hidden: Sequence[int],
    outputs: int,
    activation: str | None = "relu",
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> list[Layer]:
    """Per hidden width (one int: one hidden layer; ``()``: none): ``Dense`` with
    ``activation`` (or ``Dense``, ``BatchNorm1d`` and the activation as its own layer), then
    ``Dropout`` if ``dropout``; a linear ``Dense(outputs)`` last."""
    widths = _widths(hidden)
    code = activation_code(activation)  # (an unknown name refused, whatever batch_norm)
    layers: list[Layer] = []
    for units in widths:
        if batch_norm:
            layers += [Dense(units), BatchNorm1d()]
            layers += [LAYERS[code.name.lower()]()] if code != Act.LINEAR else []
        else:
            layers.append(Dense(units, activation))
        if dropout:
            layers.append(Dropout(dropout))
    if not _is_width(outputs):
        raise ValueError(f"outputs must be a positive integer, got {outputs!r}")
    layers.append(Dense(outputs))
    return layers


def _is_width(units: Any) -> bool:
    return isinstance(units, (int, np.integer)) and not isinstance(units, bool) and bool(units > 0)


def _widths(hidden: Any) -> list[int]:
    """``hidden`` as a list of layer widths (an int: one layer), each a positive integer."""
    if np.ndim(hidden) == 0 and not isinstance(hidden, (str, bytes, type(None))):
        hidden = (hidden.item() if isinstance(hidden, np.ndarray) else hidden,)  # one layer
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Iterable):
        raise TypeError(
            f"hidden must be the hidden layers' widths (a tuple of ints, or one int), "
            f"got {hidden!r}"
        )
    widths = list(hidden)
    bad = [w for w in widths if not _is_width(w)]
    if bad:
        raise ValueError(f"hidden widths must be positive integers, got {bad[0]!r} in {hidden!r}")
    return [int(w) for w in widths]


def mlp(
    input_dim: int | None,
    hidden: Sequence[int],
    outputs: int,
    activation: str | None = "relu",
    *,
    dropout: float = 0.0,
    batch_norm: bool = False,
    loss: str | Loss = "softmax_cross_entropy",
    optimizer: str | Optimizer = "adam",
    backend: str | Backend | None = None,
    dtype: Any = "float32",
    seed: int | None = None,
    precision: str = "fp32",
) -> Sequential:
    """A ``Sequential`` of ``mlp_layers``, built for ``input_dim`` features when it is given.

    >>> from fastnet import Adam, mlp
    >>> model = mlp(784, (256, 128), 10, optimizer=Adam(1e-3), backend="numpy", seed=0)
    >>> model.count_params()  # 784*256+256 + 256*128+128 + 128*10+10
    235146
    """
    model = Sequential(
        mlp_layers(hidden, outputs, activation, dropout, batch_norm),
        loss,
        optimizer,
        backend=backend,
        dtype=dtype,
        seed=seed,
        precision=precision,
    )
    return model if input_dim is None else model.build(input_dim)


__all__ = ["mlp", "mlp_layers"]

"""``mlp``: the multi-layer perceptron that the CLI, the estimators and the benchmark train."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastnet.backends import Backend
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
    """Per hidden width: ``Dense`` with ``activation`` (or ``Dense``, ``BatchNorm1d`` and the
    activation as its own layer), then ``Dropout`` if ``dropout``; a linear ``Dense(outputs)``
    last."""
    layers: list[Layer] = []
    for units in hidden:
        if batch_norm:
            layers += [Dense(int(units)), BatchNorm1d()]
            layers += [LAYERS[activation]()] if activation else []
        else:
            layers.append(Dense(int(units), activation))
        if dropout:
            layers.append(Dropout(dropout))
    layers.append(Dense(int(outputs)))
    return layers


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

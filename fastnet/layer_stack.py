"""Checks and fixes that look at a stack of layers as a whole (a layer sees only itself):
called when a model is built."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastnet.backends.base import Act
from fastnet.initializers import He
from fastnet.layers import (
    BatchNorm1d,
    Dense,
    Dropout,
    Layer,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Standardize,
)


def check_initialised(layer: Layer, name: str = "layer") -> None:
    """Refuse a layer whose ``__init__`` did not call ``Layer.__init__``."""
    if "_buffers" not in vars(layer):
        raise TypeError(
            f"{name} ({type(layer).__name__}) is not set up as a Layer: its __init__ must "
            "call super().__init__()"
        )


def check_layer_stack(layers: Sequence[Layer], mixed: bool = False) -> None:
    """Refuse one layer object at two places or in two models (fastnet has no weight sharing:
    its gradients would be wrong) and, under ``mixed`` precision, a ``Standardize`` after
    other layers. Raises ``ValueError``."""
    lead = next((i for i, x in enumerate(layers) if not isinstance(x, Standardize)), 0)
    if mixed and any(isinstance(x, Standardize) for x in layers[lead:]):
        raise ValueError(
            "mixed precision: a Standardize layer goes first (it scales the raw features "
            "before they are rounded to the half type)"
        )
    first: dict[int, int] = {}
    for i, layer in enumerate(layers):
        check_initialised(layer, f"layers[{i}]")
        if layer.built:
            raise ValueError(
                f"layers[{i}] ({type(layer).__name__}) is built (by another model, or on its "
                "own) and holds its weights: make new layer objects (model.to() copies a model)"
            )
        j = first.setdefault(id(layer), i)
        if j != i:
            raise ValueError(
                f"layers[{j}] and layers[{i}] are the same {type(layer).__name__} object: "
                "each place needs its own layer (fastnet does not share weights)"
            )


def check_alpha_used(layers: Sequence[Layer]) -> None:
    """Refuse a Dense layer's ``alpha`` (leaky_relu's slope) other than the default where its
    activation is not leaky_relu: it was ignored."""
    for i, layer in enumerate(layers):
        if not isinstance(layer, Dense) or layer.activation_code == Act.LEAKY_RELU:
            continue
        if layer.alpha != 0.01:
            raise ValueError(
                f"layers[{i}]: alpha={layer.alpha} is leaky_relu's slope, and this Dense's "
                f"activation is {layer.activation!r}: pass activation='leaky_relu' (or no alpha)"
            )


def check_loss_after_layers(layers: Sequence[Layer], loss: Any) -> None:
    """Refuse a ``Softmax`` or ``Sigmoid`` layer (or a Dense layer's activation) as the last
    layer but Dropout before a loss that applies it itself: twice trains slowly or not at all.
    Raises ``ValueError``."""
    kind = getattr(loss, "predictions", None)  # what the loss applies to the outputs
    last = next((x for x in reversed(layers) if not isinstance(x, Dropout)), None)
    if last is None or kind not in ("softmax", "sigmoid"):
        return
    twice = {"softmax": Softmax, "sigmoid": Sigmoid}[kind]
    if isinstance(last, twice) or getattr(last, "activation", None) == kind:
        raise ValueError(
            f"the last layer {type(last).__name__} applies {kind}, and {type(loss).__name__} "
            f"applies it again: remove the {kind} (the loss takes the raw outputs, the logits; "
            "model.predict_proba gives probabilities)"
        )


def check_loss_width(loss: Any, width: int) -> None:
    """Refuse a softmax loss over a single output: a softmax of one value is 1, so the loss
    is 0, the gradients are 0 and every prediction is class 0. Raises ``ValueError``."""
    if width == 1 and getattr(loss, "predictions", None) == "softmax":
        raise ValueError(
            f"{type(loss).__name__} over 1 output is always 0 (a softmax of one value is 1) "
            "and trains nothing: for two classes use loss='bce' with 1 output (or 2 outputs), "
            "for regression loss='mse'"
        )


def fix_default_initializers(layers: Sequence[Layer]) -> list[int]:
    """A linear ``Dense`` followed by a separate ``ReLU``/``LeakyReLU`` layer (after any
    ``BatchNorm1d``/``Dropout``: the notebooks' Affine, BatchNorm, ReLU with He) gets He
    initialisation, as ``Dense(units, "relu")`` does, unless its initializer was given.
    Call before the layers are built; returns the indices of the layers changed."""
    changed = []
    for i, layer in enumerate(layers):
        after = next((x for x in layers[i + 1 :] if not isinstance(x, BatchNorm1d | Dropout)), None)
        if (
            isinstance(layer, Dense)
            and layer.activation is None
            and isinstance(after, (ReLU, LeakyReLU))
            and layer.initializer.chosen_by_default
            and not isinstance(layer.initializer, He)
        ):
            layer.initializer = He()
            layer.initializer.chosen_by_default = True
            changed.append(i)
    return changed


def check_parameters_listed(layer: Layer) -> None:
    """A built layer's ``Parameter`` attributes must all be in its ``parameters()``: one it
    leaves out would pass a gradient check and never train; and their names must differ."""
    from fastnet.parameter import Parameter

    listed = {id(p) for p in layer.parameters()}
    missing = [
        k for k, v in vars(layer).items() if isinstance(v, Parameter) and id(v) not in listed
    ]
    if missing:
        raise TypeError(
            f"{type(layer).__name__} holds Parameter(s) {missing} that its parameters() does "
            f"not return: they would never train (return them from parameters())"
        )
    other = [p.name for p in layer.parameters() if p.value.dtype != layer.dtype]
    if other:  # (trained in a group of its own, its checkpoint would not load)
        raise TypeError(
            f"{type(layer).__name__}'s Parameter(s) {other} are not {layer.dtype}, the dtype "
            "build gives it: create them in it (backend.asarray(values.astype(dtype)))"
        )
    names = [p.name for p in layer.parameters()]
    clashes = sorted({str(n) for n in names if names.count(n) > 1})
    if clashes:  # (the state's keys are param/<layer>/<name>: one would overwrite another)
        raise TypeError(
            f"{type(layer).__name__}'s parameters() holds names {clashes} more than once: "
            "each Parameter needs a name of its own (checkpoints keep them by name)"
        )


def writes_own_gradients(layer: Layer) -> bool:
    """Whether ``layer``'s ``backward`` is a user's (fastnet's own write every gradient)."""
    return not type(layer).backward.__module__.startswith("fastnet.") and bool(layer.parameters())


def backward_checked(layer: Layer, dout: Any, need_dx: bool) -> Any:
    """``layer.backward`` once with its gradients set to half their dtype's largest value
    first: one its ``backward`` left all at that value was not assigned (a notebook's
    ``self.dW = ...``) or was added to (``+=`` keeps it: gradients are not zeroed between
    steps), and would train on stale values; a ``TypeError`` names it."""
    backend, marks = layer.backend, dict[str, float]()
    for p in layer.parameters():
        marks[p.name] = float(np.finfo(p.grad.dtype).max) / 2
        backend.fill(p.grad, marks[p.name])
    dx = layer.backward(dout, need_dx=need_dx)
    left = [p.name for p in layer.parameters() if (backend.to_numpy(p.grad) == marks[p.name]).all()]
    if left:
        raise TypeError(
            f"{type(layer).__name__}.backward wrote no gradient into Parameter(s) {left}: "
            "assign each p.grad = ... (an attribute such as self.dW is no gradient fastnet "
            "sees; p.grad += ... adds to the last step's: gradients are not zeroed)"
        )
    return dx


def check_built_width(layers: Sequence[Layer], widths: list[int], output_width: int) -> None:
    """The model's width as built (``widths``: each layer's input, then the output) against
    ``output_width``, what the model sized its outputs and targets by before building: a
    layer whose ``build`` changes the width without ``output_width`` saying so is named."""
    if widths[-1] == output_width:
        return
    i, layer = next(
        ((i, x) for i, x in enumerate(layers) if x.output_width(widths[i]) != widths[i + 1]),
        (None, None),
    )
    if i is None or layer is None:  # (an output_width that changed once built)
        raise TypeError(
            f"the layers built outputs of width {widths[-1]}, but their output_width said "
            f"{output_width} before building: output_width must not depend on build"
        )
    name = type(layer).__name__
    raise TypeError(
        f"{name}.build returned width {widths[i + 1]} for inputs of width {widths[i]}, but "
        f"{name}.output_width({widths[i]}) gives {layer.output_width(widths[i])}: a layer that "
        "changes the width overrides output_width(input_dim) to return it (known before "
        "building)"
    )


__all__ = [
    "backward_checked",
    "check_built_width",
    "check_initialised",
    "check_layer_stack",
    "check_loss_after_layers",
    "check_loss_width",
    "check_parameters_listed",
    "fix_default_initializers",
    "writes_own_gradients",
]

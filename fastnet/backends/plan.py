"""The typed step plan a model hands a backend to compile: its layers and its loss as plain
data, so backends never read layer attributes or compare names (``Sequential.step_plan``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fastnet.backends.base import Act


@dataclass(frozen=True)
class DensePlan:
    """``y = act(x @ weight + bias)``; ``bias`` (and its gradient) may be None."""

    weight: Any
    weight_grad: Any
    bias: Any
    bias_grad: Any
    activation: Act
    alpha: float


@dataclass(frozen=True)
class ActivationPlan:
    """An activation applied as its own layer."""

    activation: Act
    alpha: float


@dataclass(frozen=True)
class DropoutPlan:
    """Inverted dropout of ``rate`` with masks from the counter-based ``stream`` (the int64
    device array ``[key, step]``, ``fastnet.backends.counter_rng``); identity in inference."""

    rate: float
    stream: Any


@dataclass(frozen=True)
class OpsPlan:
    """A layer that computes through backend ops alone (BatchNorm1d): capturable in a
    graph, outside numba's fused Dense step. ``collective``: its ops talk to the other ranks
    (a synchronized BatchNorm1d in data-parallel training)."""

    name: str
    collective: bool = False


@dataclass(frozen=True)
class OpaquePlan:
    """A layer that computes with array expressions (not backend ops): it runs eagerly."""

    name: str
    reason: str


@dataclass(frozen=True)
class LossPlan:
    """The loss: ``name``; ``fused``, the one backend op that computes it where there is one
    ("softmax_xent" with ``label_smoothing``, "sigmoid_bce", "squared_error" with ``scale``:
    numba's fused step computes them, graphs capture them), else "" and the ``reason`` it is
    not captured; ``predictions``, what turns outputs into predictions ("softmax", "sigmoid",
    "identity", or "custom": the loss's own code)."""

    name: str
    fused: str = ""
    label_smoothing: float = 0.0
    predictions: str = "identity"
    reason: str = ""
    scale: float = 1.0


@dataclass(frozen=True)
class StepPlan:
    layers: tuple[DensePlan | ActivationPlan | DropoutPlan | OpsPlan | OpaquePlan, ...]
    loss: LossPlan
    dtype: Any
    #: what layers compute in: ``dtype``, or a half dtype under mixed precision
    compute_dtype: Any = None
    #: (name, kernel) of each parameter group's optimizer (kernel "": the reference only)
    optimizers: tuple[tuple[str, str], ...] = ()

    def capture_reason(self) -> str:
        """Why the step function cannot be captured in a graph ("" if it can): every layer
        and the loss must compute through backend ops alone."""
        opaque = sorted(
            {f"{p.name} ({p.reason})" for p in self.layers if isinstance(p, OpaquePlan)}
        )
        if opaque:
            return (
                "captured steps cover Dense, activation, Dropout and BatchNorm1d layers, "
                f"not {', '.join(opaque)}"
            )
        return self.loss.reason

    def fused_layers(self) -> list[tuple[int, Any]]:
        """``(index, plan)`` of the layers, each linear Dense followed by an activation layer
        (the notebooks' ``Affine``, ``Relu``) as one Dense with that activation: the same
        arithmetic (the activation's gradient reads the layer's output either way)."""
        fused: list[tuple[int, Any]] = []
        for i, p in enumerate(self.layers):
            last = fused[-1][1] if fused else None
            if (
                isinstance(p, ActivationPlan)
                and isinstance(last, DensePlan)
                and last.activation == Act.LINEAR
                and not (p.activation == Act.LEAKY_RELU and p.alpha < 0)  # (reads its input)
            ):
                fused[-1] = (fused[-1][0], replace(last, activation=p.activation, alpha=p.alpha))
            else:
                fused.append((i, p))
        return fused

    def dense_layers(self, inference: bool = False) -> tuple[DensePlan, ...] | None:
        """The layers when all are Dense (one at least; ``fused_layers``), else None; with
        ``inference``, Dropout layers (the identity there) are left out first."""
        layers = [
            p for _, p in self.fused_layers() if not (inference and isinstance(p, DropoutPlan))
        ]
        if layers and all(isinstance(p, DensePlan) for p in layers):
            return tuple(layers)  # type: ignore[arg-type]
        return None

    def dense_stack(self) -> tuple[tuple[DensePlan, ...], tuple[DropoutPlan | None, ...]] | None:
        """Dense layers, each with the dropout of its input (None: none), when the layers are
        Dense layers (``fused_layers``) with at most one Dropout before each (numba's fused
        step), else None."""
        denses: list[DensePlan] = []
        drops: list[DropoutPlan | None] = []
        pending: DropoutPlan | None = None
        seen = False  # a Dropout before the next Dense (whatever its rate: rates can change)
        for _, p in self.fused_layers():
            if isinstance(p, DropoutPlan) and not seen:
                seen, pending = True, (p if p.rate > 0 else None)  # rate 0: no draw
            elif isinstance(p, DensePlan):
                denses.append(p)
                drops.append(pending)
                seen, pending = False, None
            else:
                return None
        if seen or not denses:
            return None
        return tuple(denses), tuple(drops)

    def outside_dense_stack(self) -> str:
        """What keeps the layers from being a ``dense_stack`` (for messages)."""
        seen = False
        for i, p in self.fused_layers():
            if isinstance(p, DropoutPlan):
                if seen:
                    return f"two Dropouts in a row (layer {i})"
                seen = True
            elif isinstance(p, DensePlan):
                seen = False
            elif isinstance(p, ActivationPlan):
                act = p.activation.name.lower()
                fusable = p.activation != Act.TANH and p.alpha >= 0  # (tanh: eager on numba)
                hint = " (right after a linear Dense it fuses with it)" if fusable else ""
                return f"layer {i}, a separate {act}{hint}"
            else:
                why = f" ({p.reason})" if isinstance(p, OpaquePlan) else ""
                return f"layer {i}, {p.name}{why}"
        return "a Dropout after the last Dense layer" if seen else "a model without Dense layers"

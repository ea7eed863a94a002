"""The typed step plan a model hands a backend to compile: its layers and its loss as plain
data, so backends never read layer attributes or compare names (``Sequential.step_plan``)."""

from __future__ import annotations

from dataclasses import dataclass
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
class OpsPlan:
    """A layer that computes through backend ops alone (Dropout, BatchNorm1d): capturable in a
    graph, outside numba's fused Dense step."""

    name: str


@dataclass(frozen=True)
class OpaquePlan:
    """A layer that computes with array expressions (not backend ops): it runs eagerly."""

    name: str
    reason: str


@dataclass(frozen=True)
class LossPlan:
    """The loss: ``name``; ``fused_softmax_xent`` when it is the fused softmax cross-entropy
    (backend ops, capturable) with ``label_smoothing``; ``predictions``, what turns outputs into
    predictions ("softmax", "sigmoid", "identity", or "custom": the loss's own code); else the
    ``reason`` it is not captured."""

    name: str
    fused_softmax_xent: bool = False
    label_smoothing: float = 0.0
    predictions: str = "identity"
    reason: str = ""


@dataclass(frozen=True)
class StepPlan:
    layers: tuple[DensePlan | ActivationPlan | OpsPlan | OpaquePlan, ...]
    loss: LossPlan
    dtype: Any

    def capture_reason(self) -> str:
        """Why the step function cannot be captured in a graph ("" if it can): every layer
        and the loss must compute through backend ops alone."""
        opaque = sorted({p.name for p in self.layers if isinstance(p, OpaquePlan)})
        if opaque:
            return (
                "captured steps cover Dense, activation, Dropout and BatchNorm1d layers, "
                f"not {', '.join(opaque)}"
            )
        return self.loss.reason

    def dense_layers(self) -> tuple[DensePlan, ...] | None:
        """The layers when all are Dense (what numba's fused step takes), else None."""
        if all(isinstance(p, DensePlan) for p in self.layers):
            return self.layers  # type: ignore[return-value]
        return None

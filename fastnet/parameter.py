"""A trainable array with its gradient and optimizer state, kept side by side."""

from __future__ import annotations

from typing import Any


class Parameter:
    """``value`` and ``grad`` live on the layer's backend; ``state`` holds optimizer slots
    (e.g. Adam's ``m`` and ``v``) and ``step`` counts updates, so checkpoints can save both."""

    __slots__ = ("name", "value", "grad", "state", "step", "decay")

    def __init__(self, name: str, value: Any, decay: bool = True) -> None:
        self.name = name
        self.value = value
        self.grad = value * 0
        self.state: dict[str, Any] = {}
        self.step = 0
        self.decay = decay  # whether weight decay applies (weights yes, biases no)

    def __repr__(self) -> str:
        return (
            f"Parameter({self.name!r}, shape={tuple(self.value.shape)}, dtype={self.value.dtype})"
        )

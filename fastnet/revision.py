"""A counter of changes to what compiled steps bake in: hyperparameters set on layers, losses
and optimizers (``validation.Checked``, ``Optimizer.__setattr__``) and a model's loss
replaced. A compiled step re-reads its constants before a step only after a change."""

from __future__ import annotations

_count = [0]


def revision() -> int:
    """The number of changes so far (in this process)."""
    return _count[0]


def bump() -> None:
    """Record a change."""
    _count[0] += 1

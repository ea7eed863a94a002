"""Parameters and the flat arena that holds them.

A ``Parameter`` is a named view: its ``value``, ``grad`` and optimizer slots (``state``) are
reshaped slices of flat buffers owned by a ``ParameterGroup``, one group per (optimizer, dtype).
An optimizer updates a whole group with one fused kernel call per step. Inside a group the
parameters that take weight decay (weights) come first, so decay is applied to the leading
``n_decay`` elements only (biases and BatchNorm parameters follow, undecayed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Optimizer(Protocol):
    """What a group needs of an optimizer (``fastnet.optimizers.Optimizer`` provides it)."""

    slots: tuple[str, ...]
    nonnegative_slots: tuple[str, ...]

    clip_norm: float | None

    def apply(
        self,
        group: ParameterGroup,
        backend: Any,
        device_scalars: Any = None,
        total_sq: float | None = None,
    ) -> None: ...


class Parameter:
    """A trainable array. Before a model is built it owns its arrays; afterwards ``value``,
    ``grad`` and every ``state`` slot are views into its group's flat buffers."""

    __slots__ = ("name", "value", "grad", "state", "decay")

    def __init__(self, name: str, value: Any, decay: bool = True) -> None:
        self.name = name
        self.value = value
        self.grad = value * 0
        self.state: dict[str, Any] = {}
        self.decay = decay  # whether weight decay applies (weights yes, biases/BN no)

    @property
    def size(self) -> int:
        return int(np.prod(self.value.shape))

    def __repr__(self) -> str:
        return (
            f"Parameter({self.name!r}, shape={tuple(self.value.shape)}, dtype={self.value.dtype})"
        )


class ParameterGroup:
    """Parameters of one dtype updated by one optimizer: flat ``values``, ``grads`` and one
    flat buffer per optimizer slot. ``step`` counts the updates applied to the group."""

    def __init__(self, params: Sequence[Parameter], optimizer: Optimizer, backend: Any) -> None:
        ordered = [p for p in params if p.decay] + [p for p in params if not p.decay]
        dtype = ordered[0].value.dtype
        total = sum(p.size for p in ordered)
        self.optimizer, self.backend, self.params = optimizer, backend, ordered
        self.n_decay = sum(p.size for p in ordered if p.decay)
        self.values = backend.zeros((total,), dtype)
        self.grads = backend.zeros((total,), dtype)
        self.slots = {key: backend.zeros((total,), dtype) for key in optimizer.slots}
        self.step = 0
        lo = 0
        for p in ordered:
            hi = lo + p.size
            shape = tuple(p.value.shape)
            view = self.values[lo:hi].reshape(shape)
            view[...] = p.value
            p.value = view
            p.grad = self.grads[lo:hi].reshape(shape)
            p.state = {key: buf[lo:hi].reshape(shape) for key, buf in self.slots.items()}
            lo = hi

    def update(self, device_scalars: Any = None, total_sq: float | None = None) -> None:
        """One optimizer step over the whole group (one fused kernel call)."""
        self.optimizer.apply(self, self.backend, device_scalars, total_sq)


class ParameterArena:
    """All parameters of a model, grouped by (optimizer, dtype) in first-seen order."""

    def __init__(self, assignments: Sequence[tuple[Parameter, Optimizer]], backend: Any) -> None:
        buckets: dict[tuple[int, str], tuple[Optimizer, list[Parameter]]] = {}
        for param, optimizer in assignments:
            key = (id(optimizer), str(param.value.dtype))
            buckets.setdefault(key, (optimizer, []))[1].append(param)
        self.groups = [ParameterGroup(ps, opt, backend) for opt, ps in buckets.values()]
        self.group_of = {id(p): g for g in self.groups for p in g.params}

    def update(self, device_scalars: Any = None) -> None:
        """One step of every group; the global gradient norm (for ``clip_norm``) is taken over
        the whole arena once."""
        total_sq = None
        if any(g.optimizer.clip_norm is not None for g in self.groups):
            total_sq = sum(g.backend.sum_squares(g.grads) for g in self.groups)
        for group in self.groups:
            group.update(device_scalars, total_sq)

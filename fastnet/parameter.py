"""Parameters, the flat arena that holds them, and the device-resident step scalars.

A ``Parameter`` is a named view: its ``value``, ``grad`` and optimizer slots (``state``) are
reshaped slices of flat buffers owned by a ``ParameterGroup``, one group per (optimizer, dtype).
An optimizer updates a whole group with one fused kernel call per step. Inside a group the
parameters that take weight decay (weights) come first, so decay is applied to the leading
``n_decay`` elements only (biases and BatchNorm parameters follow, undecayed). Each parameter
starts at a multiple of ``ALIGN_BYTES`` of its buffers (half of it in a mixed-precision half
copy; zeros between, which every update keeps zero): GEMM kernels and their bias epilogues want
aligned operands (cuBLASLt takes a bias epilogue only from a 16-byte aligned bias).

Everything that changes from step to step lives in the group's ``scalars``, a small float64
array on the device (layout below): the learning rate (written by the host when a schedule or
callback changes it, never inside a step), the step count and what derives from both (bias
corrections, decoupled-decay shrink, clip scale), advanced on the device inside the step. A
captured step (CUDA graph) therefore replays exactly what an eager step computes.

Under a mixed-precision policy (``fastnet.mixed``) a group also holds a flat half copy of its
values, ``compute``, which layers compute with; ``update`` refreshes it after each step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

#: indices into ``ParameterGroup.scalars``
LR, T, STEP, EPS, SHRINK, GSCALE, SKIP = range(7)
N_SCALARS = 8


class Optimizer(Protocol):
    """What a group needs of an optimizer (``fastnet.optimizers.Optimizer`` provides it)."""

    name: str
    kernel: str  # the fused update kernels' name ("" if the reference only)
    slots: tuple[str, ...]
    nonnegative_slots: tuple[str, ...]
    lr: float
    clip_norm: float | None

    def scalar_constants(self) -> tuple[float, ...]: ...

    def update(self, group: ParameterGroup, backend: Any) -> None: ...


class Parameter:
    """A trainable array. Before a model is built it owns its arrays; afterwards ``value``,
    ``grad`` and every ``state`` slot are views into its group's flat buffers."""

    __slots__ = ("name", "_value", "_grad", "state", "decay", "compute", "group")

    def __init__(self, name: str, value: Any, decay: bool = True) -> None:
        self.name = name
        self.group: ParameterGroup | None = None  # set when a model's arena takes it
        self._value = value
        self._grad = value * 0
        self.state: dict[str, Any] = {}
        self.decay = decay  # whether weight decay applies (weights yes, biases/BN no)
        self.compute = value  # what layers compute with: ``value``, or its half copy (mixed)

    @property
    def value(self) -> Any:
        """The array: a view into its group's flat buffer once the model is built."""
        return self._value

    @value.setter
    def value(self, new: Any) -> None:
        """Once built, assigning copies ``new`` (its shape) into the view, as ``value[...] =
        new`` does: a new array would leave the model and its optimizer on the old one."""
        if isinstance(new, Parameter):  # (its array, copied: two layers share no weights)
            new = new.value.copy()
        if not bool(np.isfinite(new).all()):  # (as set_weights refuses them)
            raise ValueError(f"{self.name}: a value holding NaN or inf for {self!r}")
        if self.group is None:  # a layer built on its own: it computes with its value
            if self.compute is self._value:
                self.compute = new
            self._value = new
            return
        self._copy_into(self._value, new, "value")
        self.group.refresh_compute()

    @property
    def grad(self) -> Any:
        """The gradient a layer's ``backward`` writes (a view into its group's flat buffer
        once built, which the optimizer reads)."""
        return self._grad

    @grad.setter
    def grad(self, new: Any) -> None:
        """Once built, assigning copies ``new`` into the view (a custom layer's ``p.grad =
        dy.T @ x``): a new array would be a gradient no optimizer sees."""
        if self.group is None:
            self._grad = new
            return
        self._copy_into(self._grad, new, "gradient")

    def _copy_into(self, view: Any, new: Any, what: str) -> None:
        shape = tuple(getattr(new, "shape", np.shape(new)))
        if shape != tuple(view.shape):
            raise ValueError(f"{self.name}: a {what} of shape {shape} for {self!r}")
        view[...] = new

    @property
    def size(self) -> int:
        return int(np.prod(self.value.shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.value.dtype)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """NumPy's read-only view of ``value`` (a copy with ``np.array``), so that the
        notebooks' ``x @ layer.W`` and ``np.asarray(layer.W)`` read the weights; write them
        through ``layer.W.value``. A GPU array is not copied to the host behind one's back."""
        value = self._value
        if hasattr(value, "__cuda_array_interface__"):
            raise TypeError(
                f"{self.name} lives on the GPU ({type(value).__module__.split('.')[0]}): read "
                f"{self.name}.value there, or model.get_weights() for NumPy copies"
            )
        value = np.asarray(value)
        converts = dtype is not None and np.dtype(dtype) != value.dtype
        if copy is False and converts:
            raise ValueError(f"{self.name} is {value.dtype}: {dtype} needs a copy")
        if copy or converts:
            return np.array(value, dtype=dtype)
        view = value.view()
        view.flags.writeable = False
        return view

    def __repr__(self) -> str:
        return (
            f"Parameter({self.name!r}, shape={tuple(self.value.shape)}, dtype={self.value.dtype})"
        )


ALIGN_BYTES = 256


def aligned_offsets(sizes: Sequence[int], dtype: Any) -> list[int]:
    """Where each of ``sizes`` elements of ``dtype`` start in a flat buffer, one after the
    other, each at a multiple of ``ALIGN_BYTES``."""
    step = max(1, ALIGN_BYTES // np.dtype(dtype).itemsize)
    offsets, lo = [], 0
    for size in sizes:
        offsets.append(lo)
        lo += -(-size // step) * step
    return offsets


class ParameterGroup:
    """Parameters of one dtype updated by one optimizer: flat ``values``, ``grads``, one flat
    buffer per optimizer slot, the device ``scalars`` of the step (``LR``, ``T``, ...), and
    ``compute``, the values in ``compute_dtype`` (the values themselves when it is theirs)."""

    def __init__(
        self,
        params: Sequence[Parameter],
        optimizer: Optimizer,
        backend: Any,
        compute_dtype: Any = None,
        frozen: bool = False,
    ) -> None:
        self.frozen = frozen  # parameters of layers with trainable=False: never updated
        ordered = [p for p in params if p.decay] + [p for p in params if not p.decay]
        dtype = ordered[0].value.dtype
        offsets = aligned_offsets([p.size for p in ordered], dtype)
        total = offsets[-1] + ordered[-1].size
        self.optimizer, self.backend, self.params = optimizer, backend, ordered
        decayed = [i for i, p in enumerate(ordered) if p.decay]
        self.n_decay = offsets[decayed[-1]] + ordered[decayed[-1]].size if decayed else 0
        self.values = backend.zeros((total,), dtype)
        self.grads = backend.zeros((total,), dtype)
        self.slots = {key: backend.zeros((total,), dtype) for key in optimizer.slots}
        self.scalars = backend.zeros((N_SCALARS,), np.float64)
        mixed = compute_dtype is not None and np.dtype(compute_dtype) != dtype
        self.compute = backend.zeros((total,), compute_dtype) if mixed else self.values
        self.lr_written: float | None = None
        for p, lo in zip(ordered, offsets):
            hi = lo + p.size
            shape = tuple(p.value.shape)
            view = self.values[lo:hi].reshape(shape)
            view[...] = p.value
            p._value, p.group = view, self
            p._grad = self.grads[lo:hi].reshape(shape)
            p.state = {key: buf[lo:hi].reshape(shape) for key, buf in self.slots.items()}
            p.compute = self.compute[lo:hi].reshape(shape)
        self.refresh_compute()
        self.write_lr()

    def refresh_compute(self) -> None:
        """Round the values into their half copy (mixed precision; after updates and loads)."""
        if self.compute is not self.values:
            self.backend.cast(self.values, self.compute)

    @property
    def step(self) -> int:
        """Updates applied to the group (read from the device: a sync on GPUs)."""
        return int(self.backend.to_numpy(self.scalars[T : T + 1])[0])

    @step.setter
    def step(self, value: int) -> None:
        self.backend.fill(self.scalars[T : T + 1], float(value))

    def write_lr(self) -> None:
        """Copy the optimizer's learning rate to the device if it changed (host side, between
        steps: schedules and callbacks only assign ``optimizer.lr``)."""
        lr = float(self.optimizer.lr)
        if lr != self.lr_written:
            self.backend.fill(self.scalars[LR : LR + 1], lr)  # a kernel argument: no sync
            self.lr_written = lr


class ParameterArena:
    """All parameters of a model, grouped by (optimizer, dtype) in first-seen order. With a
    ``compute_dtype`` other than theirs (mixed precision) every group keeps a copy in it, and
    with a ``scaler`` (``fastnet.mixed.LossScaler``, float16) the gradients arrive multiplied
    by its scale: ``update`` divides them, and skips the step where any is not finite."""

    def __init__(
        self,
        assignments: Sequence[tuple[Parameter, Optimizer] | tuple[Parameter, Optimizer, bool]],
        backend: Any,
        compute_dtype: Any = None,
        scaler: Any = None,
    ) -> None:
        buckets: dict[tuple, tuple[Optimizer, bool, list[Parameter]]] = {}
        for param, optimizer, *frozen in assignments:  # (frozen: of a layer not trainable)
            key = (id(optimizer), str(param.value.dtype), bool(frozen and frozen[0]))
            buckets.setdefault(key, (optimizer, key[2], []))[2].append(param)
        self.backend = backend
        self.groups = [
            ParameterGroup(ps, opt, backend, compute_dtype, frozen)
            for opt, frozen, ps in buckets.values()
        ]
        self.trained = [g for g in self.groups if not g.frozen]
        self.group_of = {id(p): g for g in self.groups for p in g.params}
        self.scaler = scaler
        # [squared global gradient norm, non-finite gradient count] of the step
        self.checks = backend.zeros((2,), np.float64)

    @property
    def clips_norm(self) -> bool:
        """Read each step: ``clip_norm`` may be set on a built model (a captured step is
        captured again, its optimizer constants having changed)."""
        return any(g.optimizer.clip_norm is not None for g in self.trained)

    def write_lr(self) -> None:
        """Host side, before a step: learning rates changed by schedules go to the device."""
        for group in self.groups:
            group.write_lr()

    def refresh_compute(self) -> None:
        for group in self.groups:
            group.refresh_compute()

    def update(self) -> None:
        """One optimizer step of every group, on the device: the loss scale divided out
        (mixed float16), the squared global gradient norm (for ``clip_norm``) over the whole
        arena, each group's scalars advanced, one fused update call per group (refreshing its
        half copy). No host value enters: a captured step replays it exactly."""
        backend, scaler = self.backend, self.scaler
        if self.clips_norm or scaler is not None:
            backend.fill(self.checks, 0.0)
        if scaler is not None:
            for group in self.trained:
                scaler.unscale(group.grads, self.checks)
        if self.clips_norm:
            for group in self.trained:
                backend.sum_squares(group.grads, self.checks[:1])
        for group in self.trained:  # (frozen groups: no update, their step count kept)
            backend.advance_scalars(group.scalars, self.checks, group.optimizer.scalar_constants())
            group.optimizer.update(group, backend)  # the half copy too (mixed precision)
        if scaler is not None:
            scaler.advance(self.checks)

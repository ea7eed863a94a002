"""The one schema of a model's state: which keys a state dict holds and what each must be.

A state (``Sequential.get_state``, checkpoints, pickles) maps keys to arrays:

- ``param/{layer}/{name}``: a parameter's values (required);
- ``step/{layer}/{name}``: updates applied by its optimizer group, an integer scalar shared by
  every parameter of the group (optional, default 0); it lives in the group's device scalars;
- ``slot/{layer}/{name}/{slot}``: an optimizer slot such as Adam's ``m`` (optional, zeros);
- ``buffer/{layer}/{key}``: a layer buffer such as BatchNorm's running mean (required);
- ``stream/{layer}/{key}``: a random stream's ``[key, step]`` (int64), such as Dropout's
  (optional: a state without it leaves the stream as it is);
- ``amp/loss_scaler``: mixed float16's ``[loss scale, clean steps]`` (float64; optional: a
  state without it leaves the scaler as it is);
- ``data/order``: ``[seed, epochs trained]`` (int64, host) of the model's data order: the
  validation split and each epoch's shuffle (optional: a state without it leaves it as it is).

``state_entries`` yields these once, in this order; reading, writing and validating all walk it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LOSS_SCALER_KEY = "amp/loss_scaler"
ORDER_KEY = "data/order"


class StateError(ValueError):
    """A state dict (from ``get_state`` or a checkpoint) does not fit the model; names the key."""


@dataclass(frozen=True)
class StateEntry:
    """One key of a state: its ``kind`` (param, step, slot, buffer), the live array it is read
    from and written to (for a step: the ``ParameterGroup``), its shape and whether it must be
    non-negative (second moments, variances)."""

    key: str
    kind: str
    ref: Any
    shape: tuple[int, ...]
    nonneg: bool = False

    @property
    def dtype(self) -> Any:
        """The live array's dtype (None for a step count)."""
        return None if self.kind == "step" else self.ref.dtype

    @property
    def required(self) -> bool:
        return self.kind in ("param", "buffer")


def state_entries(
    layers: Sequence[Any], arena: Any, scaler: Any = None, order: Any = None
) -> Iterator[StateEntry]:
    """Every entry of the state of built ``layers`` whose parameters live in ``arena``, of
    the loss ``scaler`` (``fastnet.mixed.LossScaler``) and of the data ``order`` if given."""
    for i, layer in enumerate(layers):
        for p in layer.parameters():
            shape = tuple(p.value.shape)
            group = arena.group_of[id(p)]
            yield StateEntry(f"param/{i}/{p.name}", "param", p.value, shape)
            yield StateEntry(f"step/{i}/{p.name}", "step", group, (), True)
            opt = group.optimizer
            for key in opt.slots:
                yield StateEntry(
                    f"slot/{i}/{p.name}/{key}",
                    "slot",
                    p.state[key],
                    shape,
                    key in opt.nonnegative_slots,
                )
        for key, buf in layer.state_buffers().items():
            yield StateEntry(
                f"buffer/{i}/{key}",
                "buffer",
                buf,
                tuple(buf.shape),
                key in layer.nonnegative_buffers,
            )
        for key, stream in layer.random_streams().items():
            yield StateEntry(f"stream/{i}/{key}", "stream", stream, tuple(stream.shape))
    if scaler is not None:
        yield StateEntry(LOSS_SCALER_KEY, "amp", scaler.state, (2,), True)
    if order is not None:
        yield StateEntry(ORDER_KEY, "order", order, (2,), True)


def read_state(entries: Sequence[StateEntry], backend: Any) -> dict[str, Any]:
    """Device copies of every array; step counts as Python ints."""
    xp = backend.xp
    return {e.key: e.ref.step if e.kind == "step" else xp.array(e.ref, copy=True) for e in entries}


def host_state(state: dict[str, Any], backend: Any) -> dict[str, Any]:
    """``state`` with every array copied to the host (NumPy); step counts stay ints."""
    return {k: v if isinstance(v, int) else backend.to_numpy(v) for k, v in state.items()}


def shift_layers(state: dict[str, Any], by: int) -> dict[str, Any]:
    """``state`` with its layers' entries (``kind/layer/rest``) moved ``by`` places: 1 for a
    layer put in front (``Sequential.prepend``), -1 for the first taken off (its entries
    dropped); the model's own entries (data order, loss scale) stay."""
    shifted = {}
    for key, value in state.items():
        kind, layer, rest = (key.split("/", 2) + ["", ""])[:3]
        if layer.isdigit() and rest:  # a layer's entry
            if int(layer) + by < 0:
                continue
            key = f"{kind}/{int(layer) + by}/{rest}"
        shifted[key] = value
    return shifted


def step_count(value: Any, backend: Any) -> int:
    return int(np.asarray(backend.to_numpy(value)))


def write_state(entries: Sequence[StateEntry], state: dict[str, Any], backend: Any) -> None:
    """Copy ``state`` into the live arrays in place (unchecked: validate first); missing
    steps become 0 and missing slots zeros. A group's step count is its parameters' largest
    (they differ in the state of a model whose layers were frozen otherwise: the trained
    ones counted on, as ``Sequential`` merges groups)."""
    steps: dict[int, int] = {}
    for e in entries:
        if e.kind == "step":
            count = step_count(state.get(e.key, 0), backend)
            steps[id(e.ref)] = max(steps.get(id(e.ref), 0), count)
    for e in entries:
        value = state.get(e.key)
        if e.kind == "step":
            e.ref.step = steps[id(e.ref)]
        elif value is None and e.kind == "slot":
            e.ref[...] = 0
        elif value is None and e.kind in ("stream", "amp", "order"):
            continue
        elif e.kind == "order":  # host integers
            e.ref[...] = np.asarray(backend.to_numpy(value), np.int64)
        else:
            e.ref[...] = backend.asarray(value, e.ref.dtype)


def validate_state(
    entries: Sequence[StateEntry], state: Any, backend: Any, groups: Sequence[Any]
) -> None:
    """Check ``state`` against ``entries``: known keys, every param and buffer present, exact
    shapes, real finite numbers, non-negative where needed, integer steps (``groups``: the
    parameter groups, whose parameters' counts ``write_state`` merges). Raises
    ``StateError`` naming the key; changes nothing."""
    if not isinstance(state, dict):
        raise StateError(f"state must be a dict, got {type(state).__name__}")
    known = {e.key for e in entries}
    unknown = sorted(k for k in state if k not in known)
    if unknown:
        raise StateError(f"unexpected state key {unknown[0]!r} (not part of this model)")
    for e in entries:
        if e.key not in state:
            if e.required:
                raise StateError(f"state lacks {e.key!r}")
        else:
            check_state_array(e.key, state[e.key], e.shape, e.nonneg, backend, e.dtype)
            if e.kind == "amp" and not float(backend.to_numpy(state[e.key])[0]) > 0:
                raise StateError(f"{e.key!r} must hold a positive loss scale first")
            if e.kind in ("order", "stream") and not _int64s(backend.to_numpy(state[e.key])):
                what = "(seed, epochs)" if e.kind == "order" else "(a random stream's key, step)"
                raise StateError(f"{e.key!r} must hold integers from 0 below 2**63 {what}")


def _int64s(values: np.ndarray) -> bool:
    return values.dtype.kind in "iu" and all(0 <= int(v) < 2**63 for v in values.ravel())


def check_state_array(
    key: str, value: Any, shape: tuple[int, ...], nonneg: bool, backend: Any, dtype: Any = None
) -> None:
    """One value of a state: an integer step count for ``step/`` keys, else a real array of
    ``shape`` (non-negative if ``nonneg``), finite also once cast to ``dtype`` (a float)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        arr = np.asarray(value)
    elif backend.is_native(value) or isinstance(value, np.ndarray):
        arr = value
    else:
        raise StateError(f"{key!r} must be an array, got {type(value).__name__}")
    kind = arr.dtype.kind
    if key.startswith("step/"):
        if kind not in "iu" or arr.shape != ():
            raise StateError(f"{key!r} must be an integer scalar, got {arr.dtype} {arr.shape}")
        if not 0 <= int(arr) < 2**53:
            raise StateError(f"{key!r} must be a step count from 0 below 2**53, got {int(arr)}")
        return
    if kind not in "fiu":
        raise StateError(f"{key!r} must hold real numbers, got dtype {arr.dtype}")
    if tuple(arr.shape) != shape:
        raise StateError(f"{key!r} has shape {tuple(arr.shape)}, the model needs {shape}")
    xp = backend.xp if backend.is_native(arr) else np
    if kind == "f" and not bool(xp.isfinite(arr).all()):
        raise StateError(f"{key!r} contains NaN or infinite values")
    if dtype is not None and np.dtype(dtype).kind == "f" and arr.size:
        top = np.finfo(dtype).max
        if float(xp.abs(arr).max()) > top:  # the cast would give infinities
            raise StateError(f"{key!r} holds values beyond {np.dtype(dtype)}'s range (+-{top:.4g})")
    if nonneg and bool((arr < 0).any()):
        raise StateError(f"{key!r} must be non-negative")

"""Input checks at the public boundary: fail early, name the argument, lose nothing."""

from __future__ import annotations

import decimal
import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from fastnet.backends import Backend
from fastnet.backends.interop import as_input, host_array, non_numeric_columns
from fastnet.revision import bump

__all__ = ["as_input", "check_features", "check_targets", "host_array"]


def check_features(
    x: Any,
    name: str,
    backend: Backend,
    dtype: Any,
    n_features: int | None = None,
    on_device: bool = True,
    finite: bool = True,
) -> Any:
    """Validate a 2-D numeric, finite, non-empty feature matrix and return it on the backend
    (or, with ``on_device=False``, as a host NumPy array of ``dtype``). ``finite=False``: the
    caller checks the values itself (``check_finite``; prediction, chunk by chunk)."""
    if (  # what the checks below return it as (a one-row prediction's few microseconds)
        type(x) is np.ndarray
        and on_device
        and backend.xp is np
        and x.dtype == dtype
        and x.ndim == 2
        and x.size
        and x.flags.c_contiguous
        and (n_features is None or x.shape[1] == n_features)
    ):
        if finite:
            check_finite(x, name, backend)
        return x
    raw = as_input(x, name, backend)
    kind = getattr(getattr(raw, "dtype", None), "kind", "O")
    if kind not in "biuf":
        dtype = getattr(raw, "dtype", type(raw))
        half = f" (pass {name}.astype('float32'))" if str(dtype) == "bfloat16" else ""
        raise TypeError(
            f"{name} must hold numbers, got dtype {dtype}{half}" + non_numeric_columns(x)
        )
    if raw.ndim != 2:
        hint = f" (flatten with {name}.reshape(len({name}), -1))" if raw.ndim > 2 else ""
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features), got shape {tuple(raw.shape)}{hint}"
        )
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(raw.shape)}")
    if n_features is not None and raw.shape[1] != n_features:
        raise ValueError(f"{name} has {raw.shape[1]} features but the model expects {n_features}")
    if isinstance(raw, np.memmap) and not on_device:
        _check_finite_in_chunks(raw, name, dtype)  # stays on disk: fit streams it in chunks
        return raw
    if on_device:
        arr = backend.asarray(raw, dtype)
        if finite:
            check_finite(arr, name, backend)
        return arr
    arr = np.ascontiguousarray(host_array(raw, name), dtype=dtype)
    if finite and kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains {_nonfinite(arr)}")
    return arr


def _nonfinite(arr: Any, xp: Any = np) -> str:
    """How many of ``arr`` (cast to the model's dtype) are NaN or infinite, and why."""
    bad, top = int((~xp.isfinite(arr)).sum()), np.finfo(arr.dtype).max
    return f"{bad} NaN or infinite value(s) (as {arr.dtype}: or beyond +-{top:.4g})"


def check_finite(arr: Any, name: str, backend: Backend, first_row: int | None = None) -> None:
    """A ``ValueError`` naming ``name`` where the backend array ``arr`` holds NaN or inf;
    ``first_row``: ``arr`` is rows of ``name`` from there (a chunk), and the error names the
    first bad row."""
    if arr.dtype.kind == "f" and not backend.all_finite(arr):
        if first_row is None:
            raise ValueError(f"{name} contains {_nonfinite(arr, backend.xp)}")
        xp = backend.xp
        row = first_row + int(xp.flatnonzero(~xp.isfinite(arr).reshape(len(arr), -1).all(1))[0])
        top = np.finfo(arr.dtype).max
        raise ValueError(
            f"{name} contains NaN or infinite values (as {arr.dtype}: or beyond +-{top:.4g}), "
            f"the first in row {row}"
        )


def _check_finite_in_chunks(x: np.ndarray, name: str, dtype: Any, rows: int = 16384) -> None:
    """Finite, also once cast to ``dtype`` (the model's: float64 values beyond float32's
    range are refused here, as for arrays in memory)."""
    if x.dtype.kind != "f":
        return
    for lo in range(0, x.shape[0], rows):
        with np.errstate(over="ignore", invalid="ignore"):  # (the check says it)
            chunk = x[lo : lo + rows].astype(dtype, copy=False)
        if not np.isfinite(chunk).all():
            raise ValueError(f"{name} contains {_nonfinite(chunk)} (rows from {lo})")


def _features_of(targets: str) -> str:
    """The features' name beside targets named ``targets`` (``X_val`` for ``y_val``)."""
    return "X" + targets[1:] if targets.startswith("y") else "X"


def check_class_labels(
    y: Any, name: str, n_samples: int, n_classes: int | None = None
) -> np.ndarray:
    """Validate integer class labels (1-D) on the host and return them as int64."""
    y = host_array(y, name)
    if str(y.dtype) == "bfloat16":
        raise TypeError(f"{name} must hold numbers, got dtype bfloat16 (pass {name}.astype(int))")
    if y.dtype.kind not in "biuf":
        odd = next((v for v in y.flat if not isinstance(v, numbers.Number)), None)
        raise TypeError(
            f"{name} must hold integer class labels, got dtype {y.dtype}"
            + (f" (such as {str(odd)!r})" if odd is not None else "")
            + ": encode the classes as 0..k-1 first, one mapping for all splits (encoding, "
            "codes = fastnet.tabular.LabelEncoding.fit(y_train); encoding.encode(y_other), "
            "which refuses unknown labels)"
        )
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D class labels, got shape {y.shape}")
    if len(y) != n_samples:
        raise ValueError(
            f"{_features_of(name)} has {n_samples} samples but {name} has {len(y)} labels"
        )
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError(f"{name} contains NaN or infinite labels")
        if not np.all(y == np.round(y)):
            raise ValueError(f"{name} must hold integer class labels, got non-integer values")
    if y.size and y.min() < 0:
        raise ValueError(f"{name} contains negative label {y.min().item()!r}")
    limit = n_classes if n_classes is not None else 2**31
    if y.size and y.max() >= limit:
        valid = f"0..{n_classes - 1}" if n_classes is not None else "below 2**31"
        one = " (a softmax over one output is always 1: two classes on one output are "
        raise ValueError(
            f"{name} contains label {y.max().item()!r} but the model has "
            f"{n_classes if n_classes is not None else 'fewer'} outputs (valid labels are {valid})"
            + (one + "loss='bce', sigmoid's)" if n_classes == 1 else "")
        )
    return y.astype(np.int64)


def check_targets(
    y: Any,
    name: str,
    n_samples: int,
    n_outputs: int,
    backend: Backend,
    dtype: Any,
    loss: Any,
    on_device: bool = True,
) -> Any:
    """Validate targets for ``loss``: integer labels (1-D) for softmax classifiers, else an
    array matching the outputs, finite and inside the loss's domain (``loss.invalid_targets``).
    Returned on the backend, or on the host with ``on_device=False``."""
    place = backend.asarray if on_device else np.ascontiguousarray
    host = host_array(as_input(y, name, backend), name)  # GPU labels adopted like X (DLPack)
    column = host.ndim == 2 and host.shape[1] == 1 and n_outputs > 1
    if getattr(loss, "multiclass", False) and column:
        host = host[:, 0]  # a column of class indices (Keras's sparse labels of shape (n, 1))
    if getattr(loss, "multiclass", False) and host.ndim == 1:
        return place(check_class_labels(host, name, n_samples, n_outputs))
    if host.dtype.kind not in "biuf":
        text = host.dtype.kind in "USO" and getattr(loss, "classification", False)
        raise TypeError(
            f"{name} must be numeric, got dtype {host.dtype}"
            + (": encode the two classes as 0 and 1 first (encoding, codes = "
               "fastnet.tabular.LabelEncoding.fit(y_train); encoding.encode(y_other))" if text
               else "")
        )  # fmt: skip
    if host.ndim == 1:
        host = host.reshape(-1, 1)
    if host.ndim != 2 or host.shape[0] != n_samples:
        raise ValueError(
            f"{_features_of(name)} has {n_samples} samples but {name} has shape {host.shape}"
        )
    if host.shape[1] != n_outputs:
        raise ValueError(
            f"{name} has {host.shape[1]} columns but the model has {n_outputs} outputs"
        )
    with np.errstate(over="ignore"):
        cast = np.asarray(host, dtype)  # checked as the model holds it: 1e39 is inf in float32
    if not np.isfinite(cast).all():
        raise ValueError(f"{name} contains {_nonfinite(cast)}")
    bad = loss.invalid_targets(host)
    if bad:
        raise ValueError(f"{name}: {bad} for {type(loss).__name__}")
    return place(cast)


def check_positive_int(value: Any, name: str) -> int:
    return check_count(value, name, 1)


def check_count(value: Any, name: str, low: int = 0) -> int:
    """An integer ``>= low`` (NumPy's too, not a bool) as an ``int``; else a ValueError naming
    ``name``."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Integral)
        or value < low
    ):
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(
            low, f"an integer >= {low}"
        )
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_number(
    value: Any, name: str, low: float = -math.inf, high: float = math.inf, opened: str = ""
) -> float:
    """A finite real number (NumPy's too, not a bool or a string) in ``[low, high]`` as a
    ``float``, open at ``low`` and/or ``high`` where ``opened`` has "low"/"high"; else a
    ValueError naming ``name``."""
    try:
        v = float(value) if is_real(value) or isinstance(value, decimal.Decimal) else math.nan
    except OverflowError:  # (an int past float's range: 10**400)
        v = math.inf
    above = low < v if "low" in opened else low <= v
    below = v < high if "high" in opened else v <= high
    if not (math.isfinite(v) and above and below):
        if math.isinf(low) and math.isinf(high):
            where = ""
        elif math.isinf(high):
            where = f"> {low:g}" if "low" in opened else f">= {low:g}"
        else:
            left, right = "(" if "low" in opened else "[", ")" if "high" in opened else "]"
            where = f"in {left}{low:g}, {high:g}{right}"
        raise ValueError(f"{name} must be a finite number{' ' * bool(where)}{where}, got {value!r}")
    return v


class _Stored:
    """A public attribute kept in the instance's ``__dict__`` as ``_<prefix>_<name>``."""

    prefix = "stored"
    default: tuple = ()  # (one value: what an instance that never set it reads)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, f"_{self.prefix}_{name}"

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__[self.slot]
        except KeyError:
            if self.default:
                return self.default[0]
            raise AttributeError(
                f"{type(obj).__name__!r} object has no attribute {self.name!r}"
            ) from None


class Checked(_Stored):
    """A public attribute checked by ``check(value) -> value`` whenever it is set: at
    construction and after (a callback changing a built model's hyperparameter)."""

    prefix = "checked"

    def __init__(self, check: Any, *default: Any) -> None:
        self.check, self.default = check, default  # (no default: set by __init__)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = self.check(value)
        bump()  # (compiled steps re-read what they baked in)


def set_unpickled_state(obj: Any, state: dict) -> None:
    """``obj.__setstate__``: a pickle of before a hyperparameter became checked (``Checked``)
    keeps it under its plain name, moved to where the attribute reads it."""
    for key in [k for k in state if isinstance(getattr(type(obj), k, None), Checked)]:
        state[f"_checked_{key}"] = state.pop(key)
    obj.__dict__.update(state)


class SetOnce(_Stored):
    """An attribute set at construction and fixed after (it shapes the object's arrays or
    kernels: changing it silently changed the config, not the computation)."""

    prefix = "fixed"

    def __set__(self, obj: Any, value: Any) -> None:
        if self.slot in obj.__dict__ and obj.__dict__[self.slot] != value:  # (same: a no-op)
            raise AttributeError(
                f"{type(obj).__name__}.{self.name} is fixed at construction (it shapes the "
                f"layer's arrays and kernels): make a new {type(obj).__name__}"
            )
        obj.__dict__[self.slot] = value


def is_real(value: Any) -> bool:
    """A real number (NumPy's, ``Fraction``, ...), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_fraction(name: str) -> Any:
    """A checker of a number in [0, 1) named ``name`` (a rate, a momentum, a smoothing)."""

    def check(value: Any) -> float:
        if not (is_real(value) and 0 <= value < 1):  # (no float(): 10**400 overflows it)
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        return float(value)

    return check


def check_flag(value: Any, name: str) -> bool:
    """A yes/no argument: a bool (NumPy's too), never a truthy string such as "no"."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_top_k(value: Any) -> int | None:
    """``top_k``: None (no top-k accuracy) or an integer >= 1."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
    ):
        raise ValueError(f"top_k must be None or an integer >= 1, got {value!r}")
    return None if value is None else int(value)


MIXED_POLICIES = ("mixed_bfloat16", "mixed_float16")


def check_dtype(dtype: Any) -> np.dtype:
    try:
        if dtype is None:  # (NumPy reads None as float64)
            raise TypeError
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        half = (
            f" (half precision: the policy 'mixed_{dt}')"
            if dt.name in ("float16", "bfloat16")
            else ""
        )
        raise TypeError(f"dtype must be float32 or float64, got {dt}{half}")
    return dt


Method = TypeVar("Method", bound=Callable[..., Any])


def keras_names(**aliases: str) -> Callable[[Method], Method]:
    """A method also taking Keras's keyword names for some arguments, e.g. ``x="X"``:
    ``fit(x=...)`` is fastnet's ``fit(X=...)``; one given both ways is refused."""

    def wrap(method: Method) -> Method:
        names = list(inspect.signature(method).parameters)[1:]  # (after self)

        @functools.wraps(method)
        def taking(self: Any, *args: Any, **kwargs: Any) -> Any:
            for keras, ours in aliases.items() if kwargs else ():
                if keras in kwargs:
                    if ours in kwargs or names.index(ours) < len(args):
                        raise TypeError(
                            f"{method.__name__}() got {ours} twice (and as Keras's {keras}=)"
                        )
                    kwargs[ours] = kwargs.pop(keras)
            return method(self, *args, **kwargs)

        return taking  # type: ignore[return-value]

    return wrap


def on_device(method: Method) -> Method:
    """A model method run with its backend's device current (``Backend.device_scope``): a
    ``cupy:1`` model's evaluation and predictions launch their kernels on GPU 1."""

    @functools.wraps(method)
    def scoped(self: Any, *args: Any, **kwargs: Any) -> Any:
        scope = self.backend.device_scope
        if getattr(scope, "__func__", None) is Backend.device_scope:  # (a CPU's: no-op)
            return method(self, *args, **kwargs)
        with scope():
            return method(self, *args, **kwargs)

    return scoped  # type: ignore[return-value]


def keras_x(method: Method) -> Method:
    """``fit``, ``evaluate`` and the predictions: Keras's ``x=`` for ``X``, on the device."""
    return keras_names(x="X")(on_device(method))

"""Arrays from other frameworks (torch, JAX, CuPy, anything with ``__dlpack__``): where they
live, and adoption without a copy when they already live where a backend computes.

This is the only place that knows foreign array types; the input checks ask it.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

#: DLPack device types (dlpack.h): host memory, CUDA device memory, CUDA pinned host memory
DL_CPU, DL_CUDA, DL_CUDA_HOST = 1, 2, 3


def dlpack_device(x: Any) -> tuple[int, int] | None:
    """``(device_type, device_id)`` of an array exposing DLPack, else None."""
    probe = getattr(x, "__dlpack_device__", None)
    if probe is None or not hasattr(x, "__dlpack__"):
        return None
    try:
        kind, index = probe()
        return int(kind), int(index)
    except Exception:
        return None


def _describe(x: Any, device: tuple[int, int]) -> str:
    module = type(x).__module__.split(".")[0]
    where = f"the GPU (cuda:{device[1]})" if device[0] == DL_CUDA else f"device type {device[0]}"
    return f"a {module} array on {where}"


def as_input(x: Any, name: str, backend: Any) -> Any:
    """``x`` as a native array of ``backend`` or as host data (NumPy) to be copied over.

    Foreign arrays on the backend's own device are adopted through DLPack (no copy, no host
    round trip); foreign host arrays are viewed through DLPack; arrays on another device are
    refused with what to do, never moved behind the user's back."""
    if x is None:
        raise TypeError(f"{name} is None; expected an array")
    x = unmasked(x, name)
    if backend.is_native(x) or isinstance(x, np.ndarray):
        return x
    device = dlpack_device(x)
    if device is None:
        array = host_array(x, name)
        hint = "" if array.dtype.kind in "biuf" else non_numeric_columns(x)
        if hint:  # a DataFrame's string column: fit's message is predict's
            raise TypeError(f"{name} must hold numbers, got dtype {array.dtype}{hint}")
        return array
    if device == backend.dlpack_device():
        return _via_dlpack(backend.from_dlpack, x, name)
    if device[0] in (DL_CPU, DL_CUDA_HOST):
        return _via_dlpack(np.from_dlpack, x, name)
    raise TypeError(
        f"{name} is {_describe(x, device)} but the model runs on the {backend.name!r} backend "
        f"({backend.device_info()}); copy it to the host ({name}.get() or {name}.cpu()) or "
        f"build the model with backend='cupy'"
    )


def unmasked(x: Any, name: str) -> Any:
    """A NumPy masked array's data where nothing is masked; masked cells are refused (their
    mask would be dropped, the values under it read)."""
    if not isinstance(x, np.ma.MaskedArray):
        return x
    if np.ma.getmaskarray(x).any():
        raise ValueError(
            f"{name} is a masked array with masked cells, whose mask fastnet would not read: "
            f"fill them ({name}.filled(value)) or drop their rows"
        )
    return x.data


def _via_dlpack(convert: Any, x: Any, name: str) -> Any:
    """``convert(x)`` (a ``from_dlpack``), with an error naming ``name`` and its dtype for an
    array DLPack cannot carry (bfloat16 into NumPy)."""
    try:
        return convert(x)
    except (RuntimeError, BufferError, TypeError, ValueError) as exc:
        raise TypeError(
            f"{name} of dtype {getattr(x, 'dtype', '?')} cannot be read through DLPack "
            f"({exc}): pass {name}.astype('float32')"
        ) from None


def host_array(x: Any, name: str) -> np.ndarray:
    """``x`` as a host NumPy array, with errors that name the argument (ragged lists, GPU
    arrays of another framework, odd objects)."""
    if x is None:
        raise TypeError(f"{name} is None; expected an array")
    x = unmasked(x, name)
    if isinstance(x, np.ndarray):
        return _frame_of_numbers(x, x) if x.dtype == object else x
    if type(x).__module__.startswith("scipy.sparse"):
        raise TypeError(
            f"{name} is a scipy.sparse matrix; sparse matrices are not supported: pass "
            f"{name}.toarray() (dense)"
        )
    device = dlpack_device(x)
    if device is not None and device[0] not in (DL_CPU, DL_CUDA_HOST):
        getter = getattr(x, "get", None)  # CuPy copies to the host explicitly
        if type(x).__module__.split(".")[0] == "cupy" and callable(getter):
            return getter()
        raise TypeError(f"{name} is {_describe(x, device)}; copy it to the host first")
    if device is not None:
        return _via_dlpack(np.from_dlpack, x, name)
    try:
        array = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{name} cannot be converted to an array (ragged rows or mixed types?): {exc}"
        ) from None
    return _frame_of_numbers(x, array) if array.dtype == object else array


def _frame_of_numbers(x: Any, array: np.ndarray) -> np.ndarray:
    """A pandas DataFrame whose columns mix numeric types (bool and float, nullable Float64)
    as one float64 array (missing values NaN); objects that are all numbers (a Series of
    dtype object holding ints) as NumPy's numbers; others as ``array``, NumPy's objects."""
    if hasattr(x, "columns") and hasattr(x, "to_numpy"):
        kinds = [getattr(d, "kind", "O") for d in x.dtypes]
        if all(k in "biuf" for k in kinds):
            return x.to_numpy(dtype=np.float64, na_value=np.nan)
    if array.size and all(isinstance(v, numbers.Number) for v in array.flat):
        return np.array(array.tolist())
    return array


def non_numeric_columns(x: Any) -> str:
    """For an error about ``x``: its columns of no numeric dtype, if it is a DataFrame."""
    dtypes = getattr(x, "dtypes", None)
    if dtypes is None or not hasattr(x, "columns"):
        return ""
    bad = [(c, d) for c, d in zip(x.columns, dtypes) if getattr(d, "kind", "O") not in "biuf"]
    names = ", ".join(f"{c!r} ({d})" for c, d in bad[:5])
    return f"; its column(s) {names} are of no numeric dtype: encode or drop them" if bad else ""

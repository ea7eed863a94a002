"""Flush-to-zero for the span of a NumPy optimizer update (x86-64, glibc).

The NumPy backend's update of a rule with state keeps that state out of the subnormal range as
the numba kernels do: with MXCSR's FTZ bit, subnormal results are written as zero; with DAZ,
subnormal operands are read as zero. The mode is set through glibc's ``fegetmode``/
``fesetmode`` (the control modes only: exception flags raised meanwhile stay raised, as NumPy
expects) for this thread, and the caller's mode is restored after the update, also when it
raises: no mode change leaks into user code (except into what Python runs in the middle of an
update: a signal handler, a finalizer). Where it is unavailable (another CPU or C library, or
a mode that does not verify), the update flushes its slots explicitly instead
(``Backend._flush_subnormal``).
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable
from typing import Any

import numpy as np

#: MXCSR bits: FTZ (bit 15) writes subnormal results as zero, DAZ (bit 6) reads them as zero.
FTZ_DAZ = 0x8040


class _Mode(ctypes.Structure):
    """glibc's ``femode_t`` on x86-64: the x87 control word, then MXCSR."""

    _fields_ = [
        ("control", ctypes.c_ushort),
        ("reserved", ctypes.c_ushort),
        ("mxcsr", ctypes.c_uint),
    ]


class FlushToZero:
    """``run(fn, *args)``: ``fn(*args)`` with FTZ and DAZ set on this thread where the mode
    is ``available`` (checked once, on first use), else as it is."""

    def __init__(self) -> None:
        self._calls: tuple[Any, Any] | None = None  # (set once, verified: threads read it)

    @property
    def available(self) -> bool:
        if self._calls is None:
            calls = _glibc_mode_calls()
            self._calls = calls if calls[0] is not None and _verified(calls) else (None, None)
        return self._calls[0] is not None

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self.available:
            return fn(*args)
        return _in_mode(self._calls, fn, *args)  # type: ignore[arg-type]


def _in_mode(calls: tuple[Any, Any], fn: Callable[..., Any], *args: Any) -> Any:
    get, set_ = calls
    saved = _Mode()  # (per call: the mode is per thread)
    get(ctypes.byref(saved))
    try:  # (set inside: a Ctrl-C right after it still restores)
        set_(ctypes.byref(_Mode(saved.control, saved.reserved, saved.mxcsr | FTZ_DAZ)))
        return fn(*args)
    finally:
        set_(ctypes.byref(saved))


def _verified(calls: tuple[Any, Any]) -> bool:
    """The mode flushes a float32 product to zero inside ``_in_mode`` and not after it
    (whatever ``np.seterr`` the user set: the probe's underflow is its own)."""
    tiny = np.array([1e-30], np.float32)
    with np.errstate(all="ignore"):
        inside = float(_in_mode(calls, np.multiply, tiny, np.float32(1e-10))[0])
        return inside == 0.0 and float((tiny * np.float32(1e-10))[0]) != 0.0


#: the process's one instance (the C library is the process's)
flush_to_zero = FlushToZero()


def _glibc_mode_calls() -> tuple[Any, Any]:
    """glibc's ``fegetmode`` and ``fesetmode`` on x86-64 (glibc 2.25+), else (None, None)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or platform.libc_ver()[0] != "glibc":
        return None, None
    try:
        libm = ctypes.CDLL("libm.so.6")
        return libm.fegetmode, libm.fesetmode
    except (OSError, AttributeError):
        return None, None

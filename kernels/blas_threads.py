"""NumPy's OpenBLAS thread count, lowered to one for a block: the row-blocked inference
kernel (``numba_cpu.dense_forward_blocks``) runs each block's GEMMs single-threaded, one
block per core, instead of every GEMM on all cores in lockstep (predict_proba of 10,000 rows
of the default model: 0.93x onnxruntime against 1.08x, 31 paired rounds, Intel Xeon model
207, float32)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Iterator
from typing import Any

#: one lowered block at a time in a process: a second thread's would read the lowered count
#: as the one to restore
_LOCK = threading.Lock()
#: the count to restore while a block has it lowered (None: not lowered)
_lowered_from: int | None = None


def _after_fork_in_child() -> None:
    """A child forked while another thread was in a block: a free lock, BLAS's count back."""
    global _LOCK, _lowered_from
    _LOCK = threading.Lock()
    if _lowered_from is not None and (controls := _controls()) is not None:
        controls[1](_lowered_from)
    _lowered_from = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@functools.cache
def _controls() -> tuple[Any, Any] | None:
    """``(get, set)`` of NumPy's bundled OpenBLAS's thread count, or None."""
    from fastnet.kernels.numba_blas import numpy_openblas

    try:
        lib = numpy_openblas()
        get = lib.scipy_openblas_get_num_threads64_  # type: ignore[union-attr]
        set_ = lib.scipy_openblas_set_num_threads64_  # type: ignore[union-attr]
    except AttributeError:  # (no library, or not these symbols)
        return None
    get.restype, get.argtypes = ctypes.c_int, []
    set_.restype, set_.argtypes = None, [ctypes.c_int]
    return get, set_


def available() -> bool:
    """Whether the kernels' GEMMs run in NumPy's OpenBLAS and its thread count can be set."""
    from fastnet.kernels.numba_blas import SOURCE

    return SOURCE == "NumPy's OpenBLAS" and _controls() is not None


def count() -> int:
    """NumPy's OpenBLAS's thread count now (0: not settable here)."""
    return 0 if (controls := _controls()) is None else int(controls[0]())


@contextlib.contextmanager
def single_threaded() -> Iterator[int]:
    """NumPy's OpenBLAS at one thread inside the block, yielding the count it had (the cores
    the caller may use itself), restored on exit. Other threads' BLAS calls meanwhile run on
    one thread too (the count is the library's: a ``threadpoolctl`` limit entered meanwhile
    would restore the lowered count); blocks in several threads take turns."""
    controls = _controls()
    if controls is None:
        raise RuntimeError("NumPy's OpenBLAS thread count cannot be set here")
    global _lowered_from
    get, set_ = controls
    with _LOCK:
        before = _lowered_from = int(get())
        set_(1)
        try:
            yield before
        finally:
            set_(before)
            _lowered_from = None

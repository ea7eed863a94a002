"""GEMM for the numba kernels through NumPy's own BLAS (GEMV for a row times a matrix or a
matrix times a column, the routine NumPy's matmul calls there when the inner size is over 1).

numba's ``np.dot`` calls SciPy's BLAS, a second OpenBLAS with its own spinning thread pool
next to NumPy's. The kernels call :func:`gemm` instead: NumPy's bundled OpenBLAS (the ILP64
CBLAS ``scipy_cblas_?gemm64_`` of NumPy's wheels), so a process has one BLAS pool, and the
fused training step measured 0.92-0.93x the time of the same step through ``np.dot`` (two
paired 9-round runs, Intel Xeon Skylake-SP, float32). Where NumPy has no such library (a
build against another BLAS), the same symbols resolve to ``np.dot`` fallbacks, so cached
kernels link either way.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from typing import Any

import numpy as np
from llvmlite import binding
from numba import carray, cfunc, njit, types

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
# Cached kernels call these names: never rename them (old cache files would call a symbol no
# longer registered). numba's cache watches only numba_cpu.py, which inlines this file's code:
# numba_cpu.HELPERS_SHA256 (checked by a test) must be updated with any change here.
_SYMBOLS = {"float32": "fastnet_cblas_sgemm64", "float64": "fastnet_cblas_dgemm64"}
_GEMV_SYMBOLS = {"float32": "fastnet_cblas_sgemv64", "float64": "fastnet_cblas_dgemv64"}


def _signature(ptr: Any, scalar: Any) -> Any:
    """CBLAS ``?gemm`` with 64-bit dimensions: order, transA, transB, M, N, K, alpha, A, lda,
    B, ldb, beta, C, ldc."""
    i32, i64 = types.int32, types.int64
    return types.void(i32, i32, i32, i64, i64, i64, scalar, ptr, i64, ptr, i64, scalar, ptr, i64)


def _gemv_signature(ptr: Any, scalar: Any) -> Any:
    """CBLAS ``?gemv`` with 64-bit dimensions: order, trans, M, N, alpha, A, lda, x, incx,
    beta, y, incy."""
    i32, i64 = types.int32, types.int64
    return types.void(i32, i32, i64, i64, scalar, ptr, i64, ptr, i64, scalar, ptr, i64)


@functools.cache
def numpy_openblas() -> ctypes.CDLL | None:
    """NumPy's bundled OpenBLAS (ILP64 wheels: ``scipy_*64_`` symbols), or None."""
    root = os.path.dirname(np.__file__)
    patterns = ("numpy.libs/*openblas64*", "numpy/.dylibs/*openblas64*")  # Linux, macOS wheels
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(os.path.dirname(root), pattern))):
            try:
                return ctypes.CDLL(path)  # already loaded by NumPy: the same library and pool
            except OSError:
                continue
    return None


def _numpy_cblas(name: str) -> int | None:
    """Address of ``scipy_cblas_{name}64_`` in NumPy's bundled OpenBLAS, or None."""
    lib = numpy_openblas()
    try:
        return ctypes.cast(getattr(lib, f"scipy_cblas_{name}64_"), ctypes.c_void_p).value
    except AttributeError:  # (no library, or not this symbol)
        return None


def _fallback(dtype: Any) -> Any:
    """A CBLAS-shaped ``?gemm`` (alpha 1, beta 0, contiguous operands: what :func:`gemm`
    passes) running numba's ``np.dot``."""
    scalar = types.float32 if dtype == np.float32 else types.float64

    def body(order, ta, tb, m, n, k, alpha, a_ptr, lda, b_ptr, ldb, beta, c_ptr, ldc):  # noqa: ANN001
        c = carray(c_ptr, (m, n))
        if ta == NO_TRANS and tb == NO_TRANS:  # one call per layout pair: np.dot needs C or F
            np.dot(carray(a_ptr, (m, k)), carray(b_ptr, (k, n)), c)
        elif ta == NO_TRANS:
            np.dot(carray(a_ptr, (m, k)), carray(b_ptr, (n, k)).T, c)
        elif tb == NO_TRANS:
            np.dot(carray(a_ptr, (k, m)).T, carray(b_ptr, (k, n)), c)
        else:
            np.dot(carray(a_ptr, (k, m)).T, carray(b_ptr, (n, k)).T, c)

    return cfunc(_signature(types.CPointer(scalar), scalar), cache=True)(body)


def _gemv_fallback(dtype: Any) -> Any:
    """A CBLAS-shaped ``?gemv`` (alpha 1, beta 0, unit strides: what :func:`gemm` passes)
    running numba's ``np.dot``."""
    scalar = types.float32 if dtype == np.float32 else types.float64

    def body(order, trans, m, n, alpha, a_ptr, lda, x_ptr, incx, beta, y_ptr, incy):  # noqa: ANN001
        a = carray(a_ptr, (m, n))
        if trans == NO_TRANS:
            np.dot(a, carray(x_ptr, n), carray(y_ptr, m))
        else:
            np.dot(carray(x_ptr, m), a, carray(y_ptr, n))

    return cfunc(_gemv_signature(types.CPointer(scalar), scalar), cache=True)(body)


def _register() -> str:
    """Point the kernels' GEMM and GEMV symbols at NumPy's OpenBLAS (or the fallbacks);
    which it is."""
    source = "NumPy's OpenBLAS"
    for symbols, routine, fallback in (
        (_SYMBOLS, "gemm", _fallback),
        (_GEMV_SYMBOLS, "gemv", _gemv_fallback),
    ):
        for dtype, symbol in symbols.items():
            address = _numpy_cblas(("s" if dtype == "float32" else "d") + routine)
            if address is None:
                address = fallback(np.dtype(dtype).type).address
                source = "SciPy's BLAS (numba np.dot)"
            binding.add_symbol(symbol, address)
    return source


#: where the numba kernels' matrix products run
SOURCE = _register()
_intp = types.intp  # pointers pass as integers: the same registers in the C ABI
_SGEMM: Any = types.ExternalFunction(_SYMBOLS["float32"], _signature(_intp, types.float32))
_DGEMM: Any = types.ExternalFunction(_SYMBOLS["float64"], _signature(_intp, types.float64))
_SGEMV: Any = types.ExternalFunction(
    _GEMV_SYMBOLS["float32"], _gemv_signature(_intp, types.float32)
)
_DGEMV: Any = types.ExternalFunction(
    _GEMV_SYMBOLS["float64"], _gemv_signature(_intp, types.float64)
)


@njit(cache=True, inline="always")
def _operand(a):
    """(CBLAS transpose flag, leading dimension) of a C- or F-contiguous 2-D operand."""
    if a.flags.c_contiguous:
        return NO_TRANS, max(a.shape[1], 1)
    if a.flags.f_contiguous:
        return TRANS, max(a.shape[0], 1)
    raise ValueError("gemm: operands must be C- or F-contiguous")


@njit(cache=True)
def gemm(a, b, out):
    """``out = a @ b`` for 2-D float32/float64 arrays of one dtype (callers check the dtype:
    only item sizes are compared here); ``a`` and ``b`` C- or F-contiguous (transposed views),
    ``out`` C-contiguous (as numba's ``np.dot`` takes)."""
    m, k = a.shape
    n = b.shape[1]
    if k != b.shape[0] or out.shape[0] != m or out.shape[1] != n or not out.flags.c_contiguous:
        raise ValueError("gemm: shapes do not match or out is not C-contiguous")
    if a.itemsize != out.itemsize or b.itemsize != out.itemsize:
        raise ValueError("gemm: operands and out must share one float dtype")
    if m == 0 or n == 0:
        return
    if k == 0:
        out[:] = 0
        return
    ta, lda = _operand(a)
    tb, ldb = _operand(b)
    pa, pb, pc = a.ctypes.data, b.ctypes.data, out.ctypes.data
    if m == 1 or n == 1:  # a vector operand: OpenBLAS's GEMM packs it (64 against 20 us for
        _gemv(m, n, k, ta, lda, tb, ldb, pa, pb, pc, out.itemsize)  # a 784-256-128-10 row)
    elif out.itemsize == 4:
        one, zero = np.float32(1), np.float32(0)
        _SGEMM(ROW_MAJOR, ta, tb, m, n, k, one, pa, lda, pb, ldb, zero, pc, max(n, 1))
    else:
        _DGEMM(ROW_MAJOR, ta, tb, m, n, k, 1.0, pa, lda, pb, ldb, 0.0, pc, max(n, 1))


@njit(cache=True, inline="always")
def _gemv(m, n, k, ta, lda, tb, ldb, pa, pb, pc, itemsize):
    """``gemm`` where ``m == 1`` (``out = b.T @ a[0]``) or ``n == 1`` (``out = a @ b[:, 0]``)
    as one matrix-vector product (NumPy's matmul does the same for ``k > 1``; for ``k == 1``
    or ``m == n == 1`` it has other loops, whose last bits may differ); a single row or column
    of a C- or F-contiguous operand has unit stride, and so has ``out``'s."""
    if m == 1:  # y(n) = op(b).T x: b stored (k, n) row-major -> transpose; (n, k) -> not
        trans, rows, cols, ld, pm, px = (
            (TRANS, k, n, ldb, pb, pa) if tb == NO_TRANS else (NO_TRANS, n, k, ldb, pb, pa)
        )
    else:  # y(m) = op(a) x: a stored (m, k) row-major -> no transpose; (k, m) -> transpose
        trans, rows, cols, ld, pm, px = (
            (NO_TRANS, m, k, lda, pa, pb) if ta == NO_TRANS else (TRANS, k, m, lda, pa, pb)
        )
    if itemsize == 4:
        _SGEMV(ROW_MAJOR, trans, rows, cols, np.float32(1), pm, ld, px, 1, np.float32(0), pc, 1)
    else:
        _DGEMV(ROW_MAJOR, trans, rows, cols, 1.0, pm, ld, px, 1, 0.0, pc, 1)

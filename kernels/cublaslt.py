"""cuBLASLt GEMMs for the Dense forward: ``out = act(x @ w + b)`` in one call, the bias (and
ReLU) applied in the GEMM's epilogue, the algorithm chosen once per shape by cuBLASLt's heuristic.

Loaded with ctypes beside the cuBLAS CuPy uses (CuPy has no cuBLASLt module); enum values from
``cublasLt.h``/``cublas_api.h``/``library_types.h`` (CUDA 12.9, unchanged since CUDA 11).
Written on a machine without a GPU: ``lt_operands`` (the row-major to column-major mapping) is
checked on CPU against NumPy; the calls themselves first run on a GPU machine.
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

import numpy as np

CUDA_R_32F, CUDA_R_64F = 0, 1
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70
OP_N, OP_T = 0, 1
DESC_TRANSA, DESC_TRANSB, DESC_EPILOGUE, DESC_BIAS_POINTER = 3, 4, 7, 8
EPILOGUE_BIAS, EPILOGUE_RELU_BIAS = 4, 6
PREF_MAX_WORKSPACE_BYTES = 1


class Layout(NamedTuple):
    """A stored column-major matrix as cuBLASLt describes it: rows, cols, leading dimension."""

    rows: int
    cols: int
    ld: int


class LtOperands(NamedTuple):
    """``D = op_a(A) @ op_b(B)`` in column-major terms for row-major ``out = x @ w``: A is
    ``w``'s memory, B is ``x``'s, D is ``out``'s (``out.T`` column-major: N x M)."""

    trans_a: int
    a: Layout
    trans_b: int
    b: Layout
    d: Layout


def lt_operands(x_shape: tuple, x_fortran: bool, w_shape: tuple, w_fortran: bool) -> LtOperands:
    """The cuBLASLt operands for ``out[M, N] = x[M, K] @ w[K, N]`` with C-contiguous ``out`` and
    ``x``, ``w`` each C-contiguous or (``*_fortran``) F-contiguous. A C-contiguous ``w`` is,
    read column-major, ``w.T`` (N x K, ld N); an F-contiguous one is ``w`` (K x N, ld K), used
    transposed. Likewise ``x``. The bias (length N) runs along D's rows, as cuBLASLt wants."""
    m, k = x_shape
    n = w_shape[1]
    if w_fortran:
        trans_a, a = OP_T, Layout(k, n, k)
    else:
        trans_a, a = OP_N, Layout(n, k, n)
    if x_fortran:
        trans_b, b = OP_T, Layout(m, k, m)
    else:
        trans_b, b = OP_N, Layout(k, m, k)
    return LtOperands(trans_a, a, trans_b, b, Layout(n, m, n))


class _HeuristicResult(ctypes.Structure):
    _fields_ = [
        ("algo", ctypes.c_uint64 * 8),
        ("workspace_size", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("waves_count", ctypes.c_float),
        ("reserved", ctypes.c_int * 4),
    ]


class _Plan(NamedTuple):
    desc: ctypes.c_void_p
    layouts: tuple[ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    result: _HeuristicResult


class LtGemm:
    """cuBLASLt on the current device: ``__call__`` runs a Dense forward, or returns False when
    cuBLASLt has no algorithm for it (the caller falls back to cuBLAS + the bias kernel)."""

    WORKSPACE_BYTES = 32 * 2**20

    def __init__(self, cublas_path: str) -> None:
        import cupy as cp

        path = cublas_path.replace("libcublas.so", "libcublasLt.so")
        self.lib = lib = ctypes.CDLL(path)
        vp, i, u64, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_size_t
        ptr = ctypes.POINTER(vp)
        signatures: dict[str, list] = {
            "cublasLtCreate": [ptr],
            "cublasLtMatmulDescCreate": [ptr, i, i],
            "cublasLtMatmulDescSetAttribute": [vp, i, vp, sz],
            "cublasLtMatrixLayoutCreate": [ptr, i, u64, u64, ctypes.c_int64],
            "cublasLtMatmulPreferenceCreate": [ptr],
            "cublasLtMatmulPreferenceSetAttribute": [vp, i, vp, sz],
            "cublasLtMatmulAlgoGetHeuristic": [
                vp,
                vp,
                vp,
                vp,
                vp,
                vp,
                vp,
                i,
                ctypes.POINTER(_HeuristicResult),
                ctypes.POINTER(i),
            ],
            "cublasLtMatmul": [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, sz, vp],
        }
        for name, argtypes in signatures.items():
            getattr(lib, name).argtypes = argtypes
            getattr(lib, name).restype = i
        self.handle = vp()
        self._check(lib.cublasLtCreate(ctypes.byref(self.handle)), "cublasLtCreate")
        self.workspace = cp.empty(self.WORKSPACE_BYTES, dtype=np.uint8)
        self.preference = vp()
        self._check(
            lib.cublasLtMatmulPreferenceCreate(ctypes.byref(self.preference)), "PreferenceCreate"
        )
        limit = ctypes.c_uint64(self.WORKSPACE_BYTES)
        self._check(
            lib.cublasLtMatmulPreferenceSetAttribute(
                self.preference, PREF_MAX_WORKSPACE_BYTES, ctypes.byref(limit), 8
            ),
            "PreferenceSetAttribute",
        )
        self.plans: dict[tuple, _Plan | None] = {}
        self.scalars = {
            np.dtype(np.float32): (ctypes.c_float(1.0), ctypes.c_float(0.0)),
            np.dtype(np.float64): (ctypes.c_double(1.0), ctypes.c_double(0.0)),
        }

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"cuBLASLt {what} failed with status {status}")

    @staticmethod
    def supports(x: Any, w: Any, b: Any, out: Any) -> bool:
        """float32/float64 of one dtype, 2-D, ``x``/``w`` C- or F-contiguous, C-contiguous
        ``out`` and bias."""
        dtype = out.dtype
        if dtype not in (np.float32, np.float64) or not out.flags.c_contiguous:
            return False
        for a in (x, w):
            if (
                a.ndim != 2
                or a.dtype != dtype
                or not (a.flags.c_contiguous or a.flags.f_contiguous)
            ):
                return False
        return b.ndim == 1 and b.dtype == dtype and b.flags.c_contiguous

    def _plan(self, x: Any, w: Any, relu: bool, tf32: bool) -> _Plan | None:
        x_f, w_f = not x.flags.c_contiguous, not w.flags.c_contiguous
        key = (x.shape, w.shape, x_f, w_f, str(x.dtype), relu, tf32)
        if key in self.plans:
            return self.plans[key]
        lib, ct = self.lib, ctypes
        ops = lt_operands(x.shape, x_f, w.shape, w_f)
        double = x.dtype == np.float64
        data = CUDA_R_64F if double else CUDA_R_32F
        compute = COMPUTE_64F if double else (COMPUTE_32F_FAST_TF32 if tf32 else COMPUTE_32F)
        desc = ct.c_void_p()
        self._check(lib.cublasLtMatmulDescCreate(ct.byref(desc), compute, data), "DescCreate")
        epilogue = ct.c_uint32(EPILOGUE_RELU_BIAS if relu else EPILOGUE_BIAS)
        for attr, value in (
            (DESC_TRANSA, ct.c_int32(ops.trans_a)),
            (DESC_TRANSB, ct.c_int32(ops.trans_b)),
            (DESC_EPILOGUE, epilogue),
        ):
            status = lib.cublasLtMatmulDescSetAttribute(desc, attr, ct.byref(value), 4)
            self._check(status, "DescSetAttribute")
        layouts = []
        for layout in (ops.a, ops.b, ops.d):
            handle = ct.c_void_p()
            status = lib.cublasLtMatrixLayoutCreate(ct.byref(handle), data, *layout)
            self._check(status, "MatrixLayoutCreate")
            layouts.append(handle)
        a_desc, b_desc, d_desc = layouts
        result, found = _HeuristicResult(), ct.c_int(0)
        status = lib.cublasLtMatmulAlgoGetHeuristic(
            self.handle, desc, a_desc, b_desc, d_desc, d_desc, self.preference, 1,
            ct.byref(result), ct.byref(found),
        )  # fmt: skip
        plan = None
        if status == 0 and found.value > 0 and result.workspace_size <= self.WORKSPACE_BYTES:
            plan = _Plan(desc, (a_desc, b_desc, d_desc), result)
        self.plans[key] = plan
        return plan

    def __call__(self, x: Any, w: Any, b: Any, out: Any, relu: bool, tf32: bool) -> bool:
        """``out = (relu)(x @ w + b)``; False (nothing done) when cuBLASLt has no algorithm."""
        import cupy as cp

        plan = self._plan(x, w, relu, tf32)
        if plan is None:
            return False
        lib, ct = self.lib, ctypes
        bias = ct.c_void_p(b.data.ptr)  # per call: layers of one shape share the plan
        status = lib.cublasLtMatmulDescSetAttribute(
            plan.desc, DESC_BIAS_POINTER, ct.byref(bias), ct.sizeof(bias)
        )
        self._check(status, "DescSetAttribute(bias)")
        one, zero = self.scalars[out.dtype]
        a_desc, b_desc, d_desc = plan.layouts
        status = lib.cublasLtMatmul(
            self.handle, plan.desc, ct.byref(one), w.data.ptr, a_desc, x.data.ptr, b_desc,
            ct.byref(zero), out.data.ptr, d_desc, out.data.ptr, d_desc,
            ct.byref(plan.result.algo), self.workspace.data.ptr, self.WORKSPACE_BYTES,
            cp.cuda.get_current_stream().ptr,
        )  # fmt: skip
        self._check(status, "Matmul")
        return True


_GEMMS: dict[tuple[int, int], LtGemm] = {}


def lt_gemm(cublas_path: str) -> LtGemm:
    """The cuBLASLt handle and workspace of the current device and thread."""
    import threading

    import cupy as cp

    key = (cp.cuda.Device().id, threading.get_ident())
    if key not in _GEMMS:
        _GEMMS[key] = LtGemm(cublas_path)
    return _GEMMS[key]

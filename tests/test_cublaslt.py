"""The cuBLASLt GEMM's operand mapping, checked on CPU: a column-major emulation of
``D = op_a(A) @ op_b(B)`` over the very memory of row-major ``x``, ``w`` and ``out`` (as
cuBLASLt reads it, from ``lt_operands``) must compute ``out = x @ w`` for every layout."""

from __future__ import annotations

import numpy as np
import pytest
from fastnet.kernels.cublaslt import OP_N, Layout, lt_operands


def _stored(memory: np.ndarray, layout: Layout) -> np.ndarray:
    """The column-major matrix ``layout`` describes over flat ``memory``."""
    rows, cols, ld = layout
    assert ld >= rows and memory.size >= ld * (cols - 1) + rows
    return np.stack([memory[c * ld : c * ld + rows] for c in range(cols)], axis=1)


@pytest.mark.parametrize("x_fortran", [False, True])
@pytest.mark.parametrize("w_fortran", [False, True])
@pytest.mark.parametrize("shape", [(128, 784, 256), (1, 5, 3), (7, 1, 9), (64, 30, 1)])
def test_lt_operands_compute_x_at_w(shape, x_fortran, w_fortran):
    m, k, n = shape
    r = np.random.default_rng(m * k * n)
    x, w = r.standard_normal((m, k)), r.standard_normal((k, n))
    ops = lt_operands(x.shape, x_fortran, w.shape, w_fortran)
    a = _stored(w.ravel(order="F" if w_fortran else "C"), ops.a)
    b = _stored(x.ravel(order="F" if x_fortran else "C"), ops.b)
    d = (a if ops.trans_a == OP_N else a.T) @ (b if ops.trans_b == OP_N else b.T)
    assert d.shape == (ops.d.rows, ops.d.cols) == (n, m)  # bias runs along D's rows: length n
    out = np.empty((m, n))
    out.ravel()[:] = d.ravel(order="F")  # D column-major with ld n is out, C-contiguous
    assert ops.d.ld == n
    np.testing.assert_allclose(out, x @ w, rtol=1e-12, atol=1e-12)


def test_alignment_is_the_largest_power_of_two_up_to_256():
    """What the heuristic is told about each pointer: arena parameters sit at 4-byte offsets."""
    from fastnet.kernels.cublaslt import alignment

    assert [alignment(p) for p in (0, 4, 12, 64, 96, 512, 1024 + 8)] == [256, 4, 4, 64, 32, 256, 8]


def test_a_bias_below_16_byte_alignment_gets_no_epilogue():
    """Epilogue kernels may assume an aligned bias (the alignment preferences cover A-D only):
    a bias at a 4-byte offset of the arena is left to the separate bias kernel."""
    from fastnet.kernels.cublaslt import LtGemm

    x, w, out = np.ones((8, 4), np.float32), np.ones((4, 3), np.float32), np.empty((8, 3))
    arena = np.zeros(64, np.float32)
    base = (-arena.ctypes.data % 16) // 4  # the first 16-byte aligned element
    out = out.astype(np.float32)
    assert LtGemm.supports(x, w, out, arena[base : base + 3])
    assert not LtGemm.supports(x, w, out, arena[base + 1 : base + 4])
    assert not LtGemm.supports(x, w, out, arena[base + 2 : base + 5])  # 8 bytes


def test_lt_types_accumulate_half_operands_in_float32():
    """Mixed precision's GEMMs: float16 operands into float16 activations or float32 weight
    gradients, always CUBLAS_COMPUTE_32F with float32 alpha/beta (cublasLt's supported
    combinations); float32 and float64 in their own type; the rest is not cuBLASLt's."""
    from fastnet.kernels import cublaslt as lt

    f16, f32, f64 = np.float16, np.float32, np.float64
    assert lt.lt_types(f32, f32, False) == (lt.CUDA_R_32F,) * 2 + (lt.COMPUTE_32F, lt.CUDA_R_32F)
    assert lt.lt_types(f32, f32, True).compute == lt.COMPUTE_32F_FAST_TF32
    assert lt.lt_types(f64, f64, True) == (lt.CUDA_R_64F,) * 2 + (lt.COMPUTE_64F, lt.CUDA_R_64F)
    half = lt.lt_types(f16, f16, True)  # TF32 does not apply to half operands
    assert half == (lt.CUDA_R_16F, lt.CUDA_R_16F, lt.COMPUTE_32F, lt.CUDA_R_32F)
    assert lt.lt_types(f16, f32, False) == (lt.CUDA_R_16F, lt.CUDA_R_32F) + half[2:]
    assert lt.lt_types(f32, f16, False) is None and lt.lt_types(f32, f64, False) is None
    assert lt.lt_types(f16, f64, False) is None
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    assert lt.lt_types(bf16, bf16, False) == (lt.CUDA_R_16BF,) * 2 + half[2:]
    assert lt.lt_types(bf16, f32, False) == (lt.CUDA_R_16BF, lt.CUDA_R_32F) + half[2:]
    assert lt.lt_types(bf16, f16, False) is None and lt.lt_types(f16, bf16, False) is None


@pytest.mark.parametrize(
    "x, w, out, bias, ok",
    [
        ("f2", "f2", "f2", "f2", True),  # a Dense forward in float16, bias epilogue
        ("f2", "f2", "f4", None, True),  # a weight gradient into the float32 arena
        ("f2", "f2", "f4", "f2", False),  # the bias must be D's type
        ("f2", "f4", "f4", None, False),  # operands of one dtype
        ("f4", "f4", "f4", "f4", True),
    ],
)
def test_lt_supports_half_combinations(x, w, out, bias, ok):
    from fastnet.kernels.cublaslt import LtGemm

    xs, ws = np.ones((8, 4), x), np.ones((4, 3), w)
    b = None if bias is None else np.ones(3, bias)
    assert LtGemm.supports(xs, ws, np.empty((8, 3), out), b) == ok
    assert LtGemm.supports(xs.T.copy().T, ws, np.empty((8, 3), out), b) == ok  # F-contiguous x

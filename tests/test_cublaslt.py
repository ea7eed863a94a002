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

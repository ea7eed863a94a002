"""A hand-written numba matmul, kept as a benchmark contestant: measured against BLAS it loses
at every shape tried (1.2x slower at 16x32x16, 4-8x at MLP and square shapes), which is why the
numba backend calls BLAS for every matmul."""

from __future__ import annotations

from fastnet.kernels.numba_cpu import SERIAL
from numba import njit


@njit(**SERIAL)
def matmul(a, b, out):  # type: ignore[no-untyped-def]
    """``out = a @ b``, blocked over k with a contiguous, vectorized inner loop over columns."""
    n, k = a.shape
    m = b.shape[1]
    out[:] = 0
    kb = 64
    for k0 in range(0, k, kb):
        k1 = min(k0 + kb, k)
        for i in range(n):
            row = out[i]
            for p in range(k0, k1):
                aip = a[i, p]
                brow = b[p]
                for j in range(m):
                    row[j] += aip * brow[j]

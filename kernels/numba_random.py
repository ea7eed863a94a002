"""Numba dropout from the counter-based stream of ``fastnet.backends.counter_rng``: element
``j`` (C order) of step ``c`` keeps iff the top 24 bits of SplitMix64 at ``c * 2**32 + j``
reach the threshold (the same masks as the NumPy reference and the CUDA kernel).
``numba_cpu``'s fused step inlines ``dropout_rows``: update ``numba_cpu.HELPERS_SHA256`` with
any change here (a test checks)."""

from __future__ import annotations

import numpy as np
from numba import njit

BITS = 24  # random bits per element, as fastnet.backends.counter_rng.BITS (a test checks)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31, _S32, _SHIFT = (np.uint64(s) for s in (27, 30, 31, 32, 64 - BITS))


@njit(cache=True, error_model="numpy", inline="always")
def dropout_rows(x, stream, threshold, scale, out, mask):  # pragma: no cover - numba
    """``mask[r, c] = scale`` if element ``r * cols + c`` is kept at the stream's step, else 0;
    ``out = x * mask`` (2-D arrays of one shape; ``stream``: int64 ``[key, step]``,
    ``threshold``: uint64; ``scale``: x's dtype). The caller advances the step."""
    rows, cols = x.shape
    base = np.uint64(stream[0]) + (np.uint64(stream[1]) << _S32) * _GOLDEN
    zero = scale - scale
    for r in range(rows):
        for c in range(cols):
            z = base + np.uint64(r * cols + c) * _GOLDEN
            z = (z ^ (z >> _S30)) * _MIX1
            z = (z ^ (z >> _S27)) * _MIX2
            z = (z ^ (z >> _S31)) >> _SHIFT
            m = scale if z >= threshold else zero
            mask[r, c] = m
            out[r, c] = x[r, c] * m


@njit(cache=True, error_model="numpy")
def dropout(x, stream, threshold, scale, out, mask):  # pragma: no cover - numba
    """Eager dropout of 2-D ``x`` (see ``dropout_rows``)."""
    dropout_rows(x, stream, threshold, scale, out, mask)

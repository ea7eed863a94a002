"""Numba dropout from the counter-based stream of ``fastnet.backends.counter_rng``: element
``j`` of step ``c`` keeps iff the top 24 bits of SplitMix64 at ``c * 2**32 + j`` reach the
threshold (the same masks as the NumPy reference and the CUDA kernel)."""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
BITS = 24  # random bits per element, as fastnet.backends.counter_rng.BITS (a test checks)
_S27, _S30, _S31, _S32, _SHIFT = (np.uint64(s) for s in (27, 30, 31, 32, 64 - BITS))


@njit(cache=True, error_model="numpy")
def dropout(x, key, step, threshold, scale, out, mask):  # pragma: no cover - numba
    """``mask[j] = scale`` if element j is kept else 0, ``out = x * mask`` (C-contiguous
    arrays of one shape; ``key``, ``step``, ``threshold``: uint64; ``scale``: x's dtype)."""
    xs, outs, masks = x.reshape(-1), out.reshape(-1), mask.reshape(-1)
    base = key + (step << _S32) * _GOLDEN
    zero = scale - scale
    for j in range(xs.size):
        z = base + np.uint64(j) * _GOLDEN
        z = (z ^ (z >> _S30)) * _MIX1
        z = (z ^ (z >> _S27)) * _MIX2
        z = (z ^ (z >> _S31)) >> _SHIFT
        m = scale if z >= threshold else zero
        masks[j] = m
        outs[j] = xs[j] * m

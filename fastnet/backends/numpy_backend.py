"""The NumPy backend: the reference implementation in ``base.Backend``, unchanged."""

from __future__ import annotations

from fastnet.backends.base import Backend


class NumpyBackend(Backend):
    """Pure NumPy (BLAS for matmul); the reference every other backend is tested against."""

    name = "numpy"

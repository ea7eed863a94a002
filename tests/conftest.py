"""Shared fixtures: the backend parametrization (unavailable backends skip with the reason).

``cupy-emulated`` is the cupy backend with its CUDA kernels compiled for the CPU
(``emulated_cupy.py``, ``cuda_emulator.py``): its op code and kernels checked in CI, which has
no GPU."""

from __future__ import annotations

import os

import cuda_emulator
import emulated_cupy
import numpy as np
import pytest

from fastnet.backends import get_backend, probe

EMULATED = "cupy-emulated"
BACKENDS = ["numpy", "numba", "cupy", EMULATED]


def _unavailable(name):
    if name == EMULATED:
        why = cuda_emulator.missing()
        return why if why and not os.environ.get("CI") else None  # CI: a missing g++ fails
    info = probe(name)
    return None if info.available else info.reason


def backend_params(names=BACKENDS):
    params = []
    for name in names:
        why = _unavailable(name)
        marks = [pytest.mark.skip(reason=f"{name}: {why}")] if why else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def make_backend(name):
    return emulated_cupy.emulated_cupy_backend() if name == EMULATED else get_backend(name)


@pytest.fixture(params=backend_params())
def backend(request):
    return make_backend(request.param)


@pytest.fixture(params=backend_params(["numba", "cupy", EMULATED]))
def fast_backend(request):
    """The accelerated backends only (compared against the NumPy reference)."""
    return make_backend(request.param)


@pytest.fixture(params=backend_params(["cupy", EMULATED]))
def gpu(request):
    """The cupy backend: on a GPU, and on the CPU emulator."""
    return make_backend(request.param)


def needs_bfloat16_arrays(gpu):
    """Skip on a CuPy before 14 (no bfloat16 arrays); the emulated backend has them."""
    if gpu.name != EMULATED:
        import cupy

        if int(cupy.__version__.split(".")[0]) < 14:
            pytest.skip("CuPy < 14 has no bfloat16 arrays")


@pytest.fixture
def ref():
    return get_backend("numpy")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def to_np(backend, x):
    return backend.to_numpy(x) if x is not None else None


def make_blobs(n=600, d=20, k=4, seed=0):
    """Separable Gaussian blobs: a small, honest classification problem."""
    r = np.random.default_rng(seed)
    centers = r.standard_normal((k, d)) * 3
    y = r.integers(0, k, n)
    X = (centers[y] + r.standard_normal((n, d))).astype(np.float32)
    return X, y

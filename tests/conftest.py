"""Shared fixtures: the backend parametrization (unavailable backends skip with the reason)."""

from __future__ import annotations

import numpy as np
import pytest

from fastnet.backends import get_backend, probe

BACKENDS = ["numpy", "numba", "cupy"]


def backend_params(names=BACKENDS):
    params = []
    for name in names:
        info = probe(name)
        marks = [] if info.available else [pytest.mark.skip(reason=f"{name}: {info.reason}")]
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(params=backend_params())
def backend(request):
    return get_backend(request.param)


@pytest.fixture(params=backend_params(["numba", "cupy"]))
def fast_backend(request):
    """The accelerated backends only (compared against the NumPy reference)."""
    return get_backend(request.param)


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

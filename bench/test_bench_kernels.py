"""Kernel benchmarks per backend; each checks its result against the NumPy reference first."""

import numpy as np
import pytest
from fastnet.bench.conftest import timed

from fastnet.backends import get_backend

REF = get_backend("numpy")


@pytest.mark.parametrize(
    "shape",
    [(128, 784, 256), (128, 256, 128), (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048)],
)
def test_matmul(benchmark, backend, shape):
    n, k, m = shape
    rng = np.random.default_rng(0)
    a, b = (
        rng.standard_normal((n, k)).astype(np.float32),
        rng.standard_normal((k, m)).astype(np.float32),
    )
    da, db, out = backend.asarray(a), backend.asarray(b), backend.empty((n, m), np.float32)
    np.testing.assert_allclose(
        backend.to_numpy(backend.matmul(da, db, out)), a @ b, rtol=1e-3, atol=1e-2
    )
    timed(benchmark, backend, lambda: backend.matmul(da, db, out))
    if benchmark.stats:  # None under --benchmark-disable (a plain correctness run)
        benchmark.extra_info["gflops"] = 2 * n * k * m / benchmark.stats["median"] / 1e9


@pytest.mark.parametrize("shape", [(128, 10), (512, 10), (4096, 1000)])
def test_softmax_xent(benchmark, backend, shape):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(shape) * 3).astype(np.float32)
    labels = rng.integers(0, shape[1], shape[0])
    _, want = REF.softmax_xent(logits, labels)
    dl, dlab, out = (
        backend.asarray(logits),
        backend.asarray(labels),
        backend.empty(shape, np.float32),
    )
    np.testing.assert_allclose(
        backend.to_numpy(backend.softmax_xent(dl, dlab, out)[1]), want, rtol=1e-5, atol=1e-6
    )
    timed(benchmark, backend, lambda: backend.softmax_xent(dl, dlab, out))


@pytest.mark.parametrize("shape", [(128, 256), (4096, 1024)])
def test_linear_relu_forward_backward(benchmark, backend, shape):
    n, m = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 256)).astype(np.float32)
    w = (rng.standard_normal((256, m)) / 16).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    want = np.maximum(x @ w + b, 0)
    dx, dw, db = backend.asarray(x), backend.asarray(w), backend.asarray(b)
    y, dy, dz = (backend.empty((n, m), np.float32) for _ in range(3))
    gw, gb, gx = (
        backend.empty((256, m), np.float32),
        backend.empty((m,), np.float32),
        backend.empty((n, 256), np.float32),
    )
    np.testing.assert_allclose(
        backend.to_numpy(backend.linear(dx, dw, db, 1, 0.0, y)), want, rtol=1e-3, atol=1e-3
    )
    dy[...] = backend.asarray(rng.standard_normal((n, m)).astype(np.float32))

    def step():
        backend.linear(dx, dw, db, 1, 0.0, y)
        backend.linear_backward(dx, dw, y, dy, 1, 0.0, gw, gb, gx, True, dz)

    timed(benchmark, backend, step)


def test_adam_update(benchmark, backend):
    from fastnet.bench.suites import adam_update_runner

    reset, run = adam_update_runner(backend, 784 * 256)
    reset()
    timed(benchmark, backend, run)

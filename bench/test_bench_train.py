"""One training step and one epoch of the default model (784-256-128-10, Adam, batch 128)."""

import numpy as np
from fastnet.bench.conftest import timed
from fastnet.bench.peers import BookMLP
from fastnet.bench.suites import _model, load_training_data


def test_train_step(benchmark, backend):
    rng = np.random.default_rng(0)
    model = _model(backend, (784, 256, 128, 10))
    xb = backend.asarray(rng.random((128, 784), dtype=np.float32))
    yb = backend.asarray(rng.integers(0, 10, 128))
    timed(benchmark, backend, lambda: model.train_step(xb, yb), rounds=100)


def test_train_epoch(benchmark, backend):
    X, y, source = load_training_data(quick=False)
    model = _model(backend, (784, 256, 128, 10))
    run_epoch = model.epoch_runner(backend.asarray(X), backend.asarray(y), 128)
    benchmark.extra_info["data"] = source
    timed(benchmark, backend, run_epoch, rounds=3)


def test_book_style_numpy_epoch(benchmark):
    X, y, _ = load_training_data(quick=False)
    book, rng = BookMLP((784, 256, 128, 10)), np.random.default_rng(0)
    book.epoch(X[:1024], y[:1024], 128, rng)
    benchmark.pedantic(lambda: book.epoch(X, y, 128, rng), rounds=3, iterations=1)

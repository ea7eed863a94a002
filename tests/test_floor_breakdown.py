"""The stripped numba loop used to price each part of a training step really trains."""

import math

import numpy as np
import pytest
from conftest import make_blobs

from fastnet.backends import probe

pytestmark = pytest.mark.skipif(not probe("numba").available, reason="numba unavailable")


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_stripped_epoch_trains(optimizer):
    from fastnet.bench.floor import stripped_epoch

    X, y = make_blobs(n=512, d=20, k=4)
    epoch = stripped_epoch(X, y, (20, 32, 4), 32, optimizer=optimizer)
    losses = [epoch() for _ in range(8)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]


def test_stripped_epoch_without_update_keeps_loss():
    from fastnet.bench.floor import stripped_epoch

    X, y = make_blobs(n=256, d=10, k=3)
    epoch = stripped_epoch(X, y, (10, 16, 3), 32, optimizer=None)
    first, second = epoch(), epoch()
    assert first == pytest.approx(second, rel=1e-5)  # same weights, same samples
    assert math.isnan(stripped_epoch(X, y, (10, 16, 3), 32, elementwise=False)())


def test_floor_groups_price_every_part():
    from fastnet.bench.floor import floor_groups
    from fastnet.bench.harness import interleaved
    from fastnet.bench.suites import _model

    from fastnet.backends import get_backend

    X, y = make_blobs(n=256, d=784, k=10)
    sizes = (784, 256, 128, 10)
    numba = get_backend("numba")
    ((title, contestants),) = floor_groups(
        X, y, sizes, 128, lambda opt: _model(numba, sizes, opt)
    ).items()
    names = [c.name for c in contestants]
    assert names[0] == "matmul-only-numba-fp32" and "fastnet-numba-fused-fp32 (adam)" in names
    results = interleaved(contestants, rounds=1, reference="matmul-only-numba-fp32")
    assert all(r.times[0] > 0 and r.ratio > 0 for r in results)
    assert np.isfinite([r.median for r in results]).all()

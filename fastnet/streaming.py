"""Training on data that does not fit in device memory: the epoch's shuffled rows are gathered on
the host into a pinned (page-locked) buffer one chunk of whole batches at a time, copied to the
device in one transfer per chunk, and trained on there."""

from __future__ import annotations

from typing import Any

import numpy as np


def run_epoch_streamed(
    model: Any,
    Xh: np.ndarray,
    yh: np.ndarray,
    batch_size: int,
    order_rng: np.random.Generator,
    shuffle: bool = True,
    progress: Any = None,
    chunk_batches: int = 64,
) -> tuple[Any, Any]:
    """One epoch over host-resident ``(Xh, yh)``; returns summed loss and correct count."""
    backend = model.backend
    n = Xh.shape[0]
    rows = min(n, batch_size * chunk_batches)
    pinned_x = backend.pinned_empty((rows, Xh.shape[1]), Xh.dtype)
    pinned_y = backend.pinned_empty((rows,) + yh.shape[1:], yh.dtype)
    dev_x = backend.empty((rows, Xh.shape[1]), Xh.dtype)
    dev_y = backend.empty((rows,) + yh.shape[1:], yh.dtype)
    order = order_rng.permutation(n) if shuffle else np.arange(n)
    loss_sum: Any = 0.0
    correct_sum: Any = None
    for c0 in range(0, n, rows):
        idx = order[c0 : c0 + rows]
        m = len(idx)
        np.take(Xh, idx, axis=0, out=pinned_x[:m])
        np.take(yh, idx, axis=0, out=pinned_y[:m])
        dev_x[:m].set(pinned_x[:m])
        dev_y[:m].set(pinned_y[:m])
        for lo in range(0, m, batch_size):
            hi = min(lo + batch_size, m)
            loss, correct = model.train_step(dev_x[lo:hi], dev_y[lo:hi])
            loss_sum = loss_sum + loss * (hi - lo)
            if correct is not None:
                correct_sum = correct if correct_sum is None else correct_sum + correct
            if progress is not None:
                progress(hi - lo)
    return loss_sum, correct_sum

"""Where a numba fused-step epoch goes, timed around each call inside real epochs of the
default model (Fashion-MNIST, batch 128, Adam): the fused forward/backward kernel, the arena
update, the row gathers, the step scalars, and the rest (Python).

    python bench/results/intel-xeon-skylake-2core/step_split.py
"""

import collections
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from fastnet.bench.suites import DEFAULT_SIZES, _model, load_training_data

from fastnet.backends import get_backend, numba_step

spent: collections.Counter = collections.Counter()


def _timed(fn: Callable, label: str) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - start

    return call


def main(epochs: int = 5, batch: int = 128) -> None:
    X, y, _ = load_training_data(False)
    n = len(X) // batch * batch
    X, y = X[:n].astype(np.float32), y[:n]
    backend = get_backend("numba")
    for name in ("take_rows", "advance_scalars", "update"):
        setattr(backend, name, _timed(getattr(backend, name), name))
    build = numba_step.FusedDenseStep.__init__

    def init(step: Any, *args: Any, **kwargs: Any) -> None:
        build(step, *args, **kwargs)
        step.kernel = _timed(step.kernel, "fused kernel")

    numba_step.FusedDenseStep.__init__ = init  # type: ignore[method-assign]
    run = _model(backend, DEFAULT_SIZES).epoch_runner(X, y, batch, compiled=True)
    run()
    spent.clear()
    start = time.perf_counter()
    for _ in range(epochs):
        run()
    epoch = (time.perf_counter() - start) / epochs
    steps = n // batch
    print(f"epoch {epoch:.3f} s ({steps} steps)")
    for label, total in spent.most_common():
        print(f"  {label:16s} {total / epochs:.3f} s  {total / epochs / steps * 1e6:5.0f} us/step")
    rest = epoch - sum(spent.values()) / epochs
    print(f"  {'rest (Python)':16s} {rest:.3f} s  {rest / steps * 1e6:5.0f} us/step")


if __name__ == "__main__":
    main()

"""Which implementation ran each op: scoped kernel recorders instead of one shared dict.

Every op a backend runs is noted as ``{op: implementation}`` (``"blas"``, ``"numba-fused"``,
``"reference"`` ...) in every recorder open in the current context, kept in a ``ContextVar`` as
Thinc keeps its current ``Ops``: threads and asyncio tasks see only their own recorders, and
nested ``record_kernels`` blocks each see everything that ran inside them.

>>> import numpy as np
>>> import fastnet as fn
>>> X = np.random.default_rng(0).standard_normal((32, 4))
>>> y = (X[:, 0] > 0).astype(int)
>>> model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(2)], backend="numpy", seed=0)
>>> with record_kernels(model.backend) as ran:
...     _ = model.fit(X, y, epochs=1, verbose=0)
>>> ran["update_adam"]  # the NumPy reference; 'numba-fused' on the numba backend
'reference'

A backend also keeps its last record as ``backend.kernel_report``: the record of the latest
``record_kernels(backend)`` block, plus whatever it ran since outside any block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_RECORDERS: ContextVar[tuple[dict[str, str], ...]] = ContextVar(
    "fastnet_kernel_recorders", default=()
)


def note_kernel(last: dict[str, str], op: str, impl: str) -> None:
    """Record that ``impl`` ran ``op`` in every open recorder of this context (an op that ran
    in several implementations in a block lists them all, sorted and joined by " + ": a layer
    without a bias takes the reference, say) and in ``last``, a backend's report (outside its
    block: the latest)."""
    recorders = _RECORDERS.get()
    if not recorders:  # (a one-row prediction's microseconds)
        last[op] = impl
        return
    if not any(last is record for record in recorders):
        last[op] = impl
    for record in recorders:
        seen = record.get(op)
        if seen is None or seen == impl:
            record[op] = impl
        elif impl not in seen.split(" + "):
            record[op] = " + ".join(sorted({*seen.split(" + "), impl}))


@contextlib.contextmanager
def record_kernels(backend: Any = None) -> Iterator[dict[str, str]]:
    """Collect ``{op: implementation}`` of every op run in this context until the block ends.
    With a ``backend``, its ``kernel_report`` is this record from the start of the block."""
    record: dict[str, str] = {}
    token = _RECORDERS.set((*_RECORDERS.get(), record))
    if backend is not None:
        backend._kernel_report = record
    try:
        yield record
    finally:
        _RECORDERS.reset(token)
        if backend is not None:
            backend._kernel_report = record  # nested blocks on it end; this one is the last


__all__ = ["note_kernel", "record_kernels"]

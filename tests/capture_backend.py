"""A NumPy backend with CUDA-graph capture semantics, so the real captured-step code
(``fastnet.backends.graph_step``) runs and is checked in CI without a GPU.

``capture(fn)`` runs ``fn`` while recording every outermost backend op with its arguments as a
captured kernel bakes them: arrays by address (the very array objects, so a replay reads and
writes the same memory), host values (Python and NumPy scalars, tuples of them) by value as
they were at capture. Afterwards it undoes what the ops wrote (a capture runs no kernel), and
the returned graph's ``replay()`` re-issues the records. Work done outside backend ops, host
values computed on the side, and allocations inside a capture (refused here, as CuPy's pool
would hand out memory the graph then keeps writing) are therefore not replayed, exactly the
bugs a CUDA graph has. Streams are modelled too: every op records the stream it was issued
on, so tests can check that batch gathers and steps share the step's stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from fastnet.backends.numpy_backend import NumpyBackend

#: backend methods that issue device work (outermost calls are recorded while capturing)
OPS = (
    "matmul",
    "linear",
    "bias_act",
    "linear_backward",
    "act_backward_bias",
    "activation",
    "activation_backward",
    "softmax",
    "softmax_xent",
    "sigmoid_bce",
    "squared_error",
    "count_correct",
    "fill",
    "sum_squares",
    "advance_scalars",
    "update",
    "take_rows",
    "take_rows_at",
    "scale",
    "standardize",
    "standardize_backward",
    "allreduce",
    "dropout",
    "dropout_backward",
    "batchnorm",
    "batchnorm_backward",
    "advance_counter",
    "permutation",
    "copy_from_host",
    "cast",
    "unscale",
    "update_loss_scale",
)


#: ops that talk to other ranks: recorded but not run while capturing, as on a GPU
COLLECTIVES = frozenset({"allreduce"})


class CaptureError(RuntimeError):
    """Something a CUDA graph capture could not do (an allocation, a nested capture)."""


class SimGraph:
    def __init__(self, records: list[tuple[Callable, tuple, dict]], backend: Any) -> None:
        self.records, self.backend = records, backend

    def replay(self) -> None:
        self.backend.replays += 1
        for fn, args, kwargs in self.records:
            fn(*args, **kwargs)


def _arrays(value: Any) -> Iterator[np.ndarray]:
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _arrays(item)


class CaptureSemantics:
    """The recording graph API and named streams, for a backend class (mixed in first)."""

    def _start_recording(self, steps_per_graph: int) -> None:
        self.steps_per_graph = steps_per_graph
        self.replays = 0  # graph replays, counted by the graphs
        self.capturing = False
        self.depth = 0
        self.stream = "default"
        self.records: list[tuple[Callable, tuple, dict]] = []
        self.saved: list[tuple[np.ndarray, np.ndarray]] = []
        self.issued: list[tuple[str, str]] = []  # (op, stream) of every outermost op
        for op in OPS:
            setattr(self, op, self._recording(op, getattr(self, op)))

    def _recording(self, op: str, fn: Callable) -> Callable:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.capturing and op in COLLECTIVES and self.depth > 0:
                return None  # inside a recorded op (a synchronized batch norm's): not run either
            if self.depth == 0:
                self.issued.append((op, self.stream))
                if self.capturing:
                    self.records.append((fn, args, dict(kwargs)))
                    if op in COLLECTIVES:  # a capture launches nothing: no rank may wait on it
                        return None
                    for a in _arrays((args, tuple(kwargs.values()))):
                        self.saved.append((a, np.array(a)))  # (the test's copy, not the op's)
            self.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1

        return call

    def graph_capture_reason(self) -> str:
        return ""

    def step_stream(self) -> contextlib.AbstractContextManager:
        @contextlib.contextmanager
        def scope() -> Iterator[None]:
            before, self.stream = self.stream, "step"
            try:
                yield
            finally:
                self.stream = before

        return scope()

    def capture(self, fn: Callable[[], Any]) -> SimGraph:
        if self.stream == "default":
            raise CaptureError("capture on the default stream (CUDA refuses it)")
        self.begin_capture()
        try:
            fn()
        finally:
            graph = self.end_capture()
        return graph

    def begin_capture(self) -> None:
        """From here the backend's outermost ops are recorded (and run, to be undone)."""
        if self.capturing:
            raise CaptureError("nested capture")
        self.capturing, self.records, self.saved = True, [], []

    def end_capture(self) -> SimGraph:
        """Undo what the recorded ops wrote (a capture runs nothing); their graph."""
        self.capturing = False
        for array, before in reversed(self.saved):
            array[...] = before
        return SimGraph(self.records, self)

    def empty(self, shape: Any, dtype: Any) -> Any:
        self._no_allocation(shape)
        return super().empty(shape, dtype)  # type: ignore[misc]

    def zeros(self, shape: Any, dtype: Any) -> Any:
        self._no_allocation(shape)
        return super().zeros(shape, dtype)  # type: ignore[misc]

    def _no_allocation(self, shape: Any) -> None:
        if self.capturing:
            raise CaptureError(f"allocation of {shape} inside a captured step")


class CaptureSimBackend(CaptureSemantics, NumpyBackend):
    """NumPy reference ops plus a recording graph API and named streams."""

    name = "capture-sim"
    emulate_mixed = True  # the policies' steps checked eagerly and captured in CI

    def __init__(self, steps_per_graph: int = 1) -> None:
        NumpyBackend.__init__(self)
        self._start_recording(steps_per_graph)

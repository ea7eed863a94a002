"""The captured step: the model's own step function (``Trainer.train_step``) captured once in a
graph (``Backend.capture``: a CUDA graph on cupy) and replayed for every full batch, removing
per-kernel launch overhead, the cost that dominates small MLPs.

Nothing here is a second copy of the step: the graph is the step function's device work, with
its batch read from fixed buffers the batch source gathers into (on the same stream), loss and
correct counts accumulated on the device, and every step-dependent value (learning rate, step
count, bias corrections, decay shrink, clip scale) read from device scalars that the step
itself advances. Partial batches run the same function eagerly on views of those buffers.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def graph_reason(plan: Any) -> str:
    """Why a model with this step plan cannot be captured ("" if it can)."""
    return plan.capture_reason()


class GraphedStep:
    """A ``Trainer`` step that replays the captured step function for full batches."""

    description = "captured graph (the step function, replayed per full batch)"

    def __init__(self, model: Any, batch_size: int, spec: Any) -> None:
        backend = self.backend = model.backend
        self.model, self.batch_size = model, batch_size
        self.xb = backend.empty((batch_size, model.input_dim), model.dtype)
        self.yb = backend.empty((batch_size, *spec.target_shape), np.dtype(spec.target_dtype))
        self.wb = backend.empty((batch_size,), model.dtype) if spec.weighted else None
        self.totals = backend.zeros((2,), np.float64)
        self.graph: Any = None
        self.warm = False  # one eager full batch first: buffers exist before capture
        self.frozen: tuple = ()
        self.kept: list = []
        self.replays = 0

    def batch_buffers(self, n: int) -> tuple[Any, Any, Any] | None:
        if n > self.batch_size:
            return None
        return self.xb[:n], self.yb[:n], None if self.wb is None else self.wb[:n]

    def begin_epoch(self) -> None:
        if self.frozen != self.model._frozen_constants():
            self.graph = None  # a callback changed a constant the graph baked in: capture again
        self.backend.fill(self.totals, 0.0)

    def __call__(self, xb: Any, yb: Any, wb: Any = None) -> None:
        n = xb.shape[0]
        if n > self.batch_size:
            raise ValueError(f"batch of {n} rows exceeds the captured {self.batch_size}")
        if (wb is None) != (self.wb is None):
            raise ValueError(
                "the step was compiled for "
                + ("" if self.wb is None else "un")
                + "weighted batches"
            )
        x, y, w = self.batch_buffers(n)  # type: ignore[misc]
        for src, dst in ((xb, x), (yb, y), (wb, w)):
            if src is not None and src is not dst:
                dst[...] = src  # a caller that did not gather into the step's buffers
        self.model.arena.write_lr()  # host side, on the step's stream, before the replay
        if n == self.batch_size and self.graph is None and self.warm:
            self._capture()
        if n == self.batch_size and self.graph is not None:
            self.graph.replay()
            self.replays += 1
        else:
            self.model.train_step(x, y, w, totals=self.totals)
            self.warm = self.warm or n == self.batch_size

    def _capture(self) -> None:
        model = self.model
        self.frozen = model._frozen_constants()
        self.graph = self.backend.capture(
            lambda: model.train_step(self.xb, self.yb, self.wb, totals=self.totals)
        )
        # the graph writes into these on every replay: they must outlive the layers' caches
        self.kept = [b for layer in model.layers for b in layer.scratch_buffers()]
        self.kept += model.loss.scratch_buffers()

    def end_epoch(self) -> tuple[Any, Any]:
        totals = self.backend.to_numpy(self.totals)
        return totals[0], (totals[1] if self.model.loss.counts_correct else None)

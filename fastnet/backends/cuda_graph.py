"""The cupy backend's compiled step: one training step captured in a CUDA graph and replayed for
every full batch, removing per-kernel launch overhead (the cost that dominates small MLPs).

The replayed step reads its batch from fixed device buffers (the batch source gathers into
them), accumulates loss and correct counts on the device, and reads Adam's bias-corrected step
size from device scalars advanced inside the graph, so replays compute exactly what eager steps
would. Only the backend's public interface is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def graph_unsupported_reason(model: Any, backend: Any) -> str:
    """Why ``model`` cannot be captured on ``backend`` ("" if it can)."""
    reason = backend.graph_capture_reason()
    if reason:
        return reason
    if model.loss.name != "softmax_cross_entropy":
        return f"CUDA graphs support the softmax cross-entropy loss only, not {model.loss.name}"
    unsupported = sorted({type(layer).__name__ for layer in model.layers if not layer.capturable})
    if unsupported:
        return f"CUDA graphs support Dense and activation layers only, not {', '.join(unsupported)}"
    if len(model.arena.groups) != 1:
        return "CUDA graphs need one model-wide optimizer and dtype (no per-layer optimizers)"
    if model.arena.groups[0].optimizer.clip_norm is not None:
        return "clip_norm is not captured yet (its global norm is read back on the host)"
    return ""


class GraphedStep:
    """A ``Trainer`` step on the cupy backend: full batches replay a captured graph."""

    description = "CUDA graph (one captured step per full batch)"

    def __init__(self, model: Any, batch_size: int) -> None:
        self.model, self.backend, self.batch_size = model, model.backend, batch_size
        self.group = model.arena.groups[0]
        xp = self.xp = self.backend.xp
        dtype = model.dtype
        self.stream = xp.cuda.Stream(non_blocking=True)
        with self.backend.device, self.stream:
            self.xb = xp.empty((batch_size, model.input_dim), dtype=dtype)
            self.yb = xp.empty((batch_size,), dtype=np.int64)
            self.dlogits = xp.empty((batch_size, model.output_dim), dtype=dtype)
            self.loss_sum = xp.zeros((), dtype=dtype)
            self.correct = xp.zeros((), dtype=np.uint64)
            self.t = xp.zeros((1,), dtype=np.int64)
            self.adam_scalars = xp.zeros(2, dtype=dtype)
        self.graph: Any = None
        self.captured_config: dict | None = None
        self.replays = 0

    def batch_buffers(self, n: int) -> tuple[Any, Any] | None:
        return (self.xb[:n], self.yb[:n]) if n <= self.batch_size else None

    def begin_epoch(self) -> None:
        if self.captured_config != self.group.optimizer.get_config():
            self.graph = None  # hyperparameters are baked into the graph: capture again
        with self.backend.device, self.stream:
            self.loss_sum.fill(0)
            self.correct.fill(0)
            self.t.fill(self.group.step)

    def end_epoch(self) -> tuple[Any, Any]:
        self.stream.synchronize()
        return self.loss_sum, self.correct

    def __call__(self, xb: Any, yb: Any, wb: Any = None) -> None:
        if wb is not None:
            raise ValueError("weighted losses are not captured in CUDA graphs yet")
        n = xb.shape[0]
        with self.backend.device, self.stream:
            if n > self.batch_size or xb.data.ptr != self.xb.data.ptr:
                if n > self.batch_size:
                    raise ValueError(f"batch of {n} rows exceeds the captured {self.batch_size}")
                self.xb[:n] = xb
                self.yb[:n] = yb
            full = n == self.batch_size
            if full and self.graph is None and self.group.step > 0:
                self._capture()
            if full and self.graph is not None:
                self.graph.launch(self.stream)
                self.replays += 1
                self.group.step += 1
            else:
                self._step(n)

    def _step(self, n: int) -> None:
        model, backend = self.model, self.backend
        xb, yb, dlogits = self.xb[:n], self.yb[:n], self.dlogits[:n]
        logits = model.forward(xb, training=True)
        backend.softmax_xent(logits, yb, dlogits, loss_out=self.loss_sum, loss_scale=1.0)
        backend.count_correct(logits, yb, out=self.correct)
        model.backward(dlogits)
        opt = self.group.optimizer
        scalars = None
        if opt.name == "adam":
            backend.adam_device_scalars(
                self.t, self.adam_scalars, opt.lr, opt.beta1, opt.beta2, opt.eps
            )
            scalars = self.adam_scalars
        self.group.update(scalars)

    def _capture(self) -> None:
        self.captured_config = self.group.optimizer.get_config()
        self.stream.begin_capture()
        try:
            self._step(self.batch_size)
        finally:
            self.graph = self.stream.end_capture()
        # the graph writes into these on every replay: they must outlive the layers' caches
        self.captured_buffers = [b for layer in self.model.layers for b in layer.scratch_buffers()]
        self.group.step -= 1  # capture recorded the step without running it

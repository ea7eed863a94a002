"""The numba backend's compiled step: a dense network's forward, softmax cross-entropy and
backward run as one JIT call (``kernels.numba_cpu.dense_train_step``: the eager step's kernels
in the eager order, with no Python between them), followed by the usual arena update."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastnet.backends.base import Act


def fused_step_reason(model: Any) -> str:
    """Why ``model``'s training step cannot run as one numba call ("" if it can)."""
    loss = model.loss
    if loss.name != "softmax_cross_entropy" or getattr(loss, "label_smoothing", 0):
        return "the fused numba step covers softmax cross-entropy without label smoothing"
    others = sorted({type(layer).__name__ for layer in model.layers if layer.name != "dense"})
    if others:
        return f"the fused numba step covers Dense layers only, not {', '.join(others)}"
    if any(layer.activation_code == Act.TANH for layer in model.layers):
        return "tanh runs faster through NumPy than in numba (eager)"
    if model.dtype not in (np.float32, np.float64):
        return f"the fused numba step has no {model.dtype} kernels"
    return ""


class FusedDenseStep:
    """A ``Trainer`` step on the numba backend: one JIT call per batch, then one update."""

    description = "numba fused step (forward, loss and backward in one JIT call)"

    def __init__(self, model: Any, batch_size: int) -> None:
        from fastnet.kernels.numba_cpu import dense_train_step

        self.kernel = dense_train_step
        self.model, self.batch_size = model, batch_size
        dtype, layers = model.dtype, model.layers
        self.outs = tuple(np.empty((batch_size, layer.units), dtype) for layer in layers)
        self.dzs = tuple(np.empty_like(a) for a in self.outs)
        self.dxs = tuple(np.empty((batch_size, layer.input_dim), dtype) for layer in layers)
        self.codes = tuple(int(layer.activation_code) for layer in layers)
        self.alphas = tuple(dtype.type(layer.alpha) for layer in layers)
        # layers without bias add zeros and sum their bias gradient into scratch
        self.no_bias = [np.zeros(layer.units, dtype) for layer in layers]
        self.totals = np.zeros(2)

    def batch_buffers(self, n: int) -> None:
        return None

    def begin_epoch(self) -> None:
        self.totals[:] = 0
        for op in ("matmul", "bias_act", "act_backward_bias", "softmax_xent", "count_correct"):
            self.model.backend._ran(op, "numba-fused (in the fused step)")
        layers = self.model.layers  # parameters are re-read: set_state may have replaced them
        self.weights = tuple(layer.W.value for layer in layers)
        self.dws = tuple(layer.W.grad for layer in layers)
        pairs = [(layer.b.value, layer.b.grad) if layer.b is not None
                 else (zero, np.empty_like(zero))
                 for layer, zero in zip(layers, self.no_bias)]
        self.biases, self.dbs = tuple(b for b, _ in pairs), tuple(db for _, db in pairs)

    def __call__(self, xb: Any, yb: Any, wb: Any = None) -> None:
        if wb is not None:
            raise ValueError("weighted losses are not fused yet (use cuda_graph=False)")
        if xb.shape[0] > self.batch_size:
            raise ValueError(f"batch of {xb.shape[0]} rows exceeds the step's {self.batch_size}")
        x, labels = np.ascontiguousarray(xb, self.model.dtype), np.ascontiguousarray(yb, np.int64)
        self.kernel(x, labels, self.weights, self.biases, self.codes, self.alphas, self.outs,
                    self.dzs, self.dxs, self.dws, self.dbs, self.totals)
        self.model.arena.update()

    def end_epoch(self) -> tuple[Any, Any]:
        return self.totals[0], self.totals[1]

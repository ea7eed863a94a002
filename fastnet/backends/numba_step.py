"""The numba backend's compiled step: a dense network's forward, loss (softmax or sigmoid
cross-entropy, mean squared error) and backward run as one JIT call
(``kernels.numba_cpu.dense_train_step``: the eager step's kernels in the eager order, with no
Python between them), followed by the same arena update as the eager step
(``ParameterArena.update``: device scalars advanced, one fused update per group)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastnet.backends.base import Act
from fastnet.backends.counter_rng import check_draw_size, drop_threshold
from fastnet.backends.plan import StepPlan
from fastnet.revision import revision

#: the fused step kernel's ``kind`` of each fused loss op, and the ops it runs
LOSS_KINDS = {"softmax_xent": 0, "sigmoid_bce": 1, "squared_error": 2}
LOSS_OPS = (("softmax_xent", "count_correct"), ("sigmoid_bce",), ("squared_error",))


def fused_step_reason(plan: StepPlan) -> str:
    """Why a model with this step plan cannot run as one numba call ("" if it can)."""
    from fastnet.kernels.numba_cpu import ACTIVATIONS

    stack = plan.dense_stack()
    if stack is None:
        return (
            "the fused numba step covers Dense layers, each with at most one Dropout before "
            f"it, not {plan.outside_dense_stack()}"
        )
    layers = stack[0]
    if plan.loss.fused not in LOSS_KINDS:
        return (
            "the fused numba step covers the softmax and sigmoid cross-entropies and the mean "
            f"squared error, not {plan.loss.name}"
        )
    if any(layer.activation == Act.TANH for layer in layers):
        return "tanh runs faster through NumPy than in numba (eager)"
    unknown = [a.name.lower() for a in (x.activation for x in layers) if a not in ACTIVATIONS]
    if unknown:
        return f"the numba kernels have no {unknown[0]} (eager)"
    if plan.dtype not in (np.float32, np.float64):
        return f"the fused numba step has no {plan.dtype} kernels"
    return ""


class FusedDenseStep:
    """A ``Trainer`` step on the numba backend: one JIT call per batch, then one update."""

    description = "numba fused step (forward, loss and backward in one JIT call)"

    def __init__(self, model: Any, batch_size: int, plan: StepPlan, spec: Any = None) -> None:
        from fastnet.kernels.numba_cpu import dense_train_step

        self.kernel = dense_train_step
        self.model, self.batch_size = model, batch_size
        self.backend = model.backend
        dtype = np.dtype(plan.dtype)
        layers, _ = plan.dense_stack()  # type: ignore[misc]
        self.widths = widths = [layer.weight.shape for layer in layers]
        for rows, _ in widths:
            check_draw_size(batch_size * rows)  # a dropout before any layer draws this many
        self.drop_rates: tuple[float, ...] = ()  # set with the dropout buffers in begin_epoch
        self.outs = tuple(np.empty((batch_size, cols), dtype) for _, cols in widths)
        self.dzs = tuple(np.empty_like(a) for a in self.outs)
        self.dxs = tuple(np.empty((batch_size, rows), dtype) for rows, _ in widths)
        self.codes = tuple(int(layer.activation) for layer in layers)
        self.alphas = tuple(dtype.type(layer.alpha) for layer in layers)
        self._read_loss(plan)
        self.dtype = dtype
        self.no_labels = np.empty(0, np.int64)
        self.no_targets = np.empty((0, 0), dtype)
        self.no_weights = np.empty(0, dtype)
        self.totals = np.zeros(2)
        self.frozen: tuple = ()  # the model's constants the kernel's arguments were read for
        self.fallback = ""  # why the model's plan is no longer fused (a callback's change)
        self.required = False  # compiled=True: such a change raises instead
        self.buffers: tuple[Any, ...] | None = None
        if spec is not None:  # the batch source gathers into these: no allocation per batch
            self.buffers = (
                np.empty((batch_size, widths[0][0]), dtype),
                np.empty((batch_size, *spec.target_shape), np.dtype(spec.target_dtype)),
                np.empty(batch_size, dtype) if spec.weighted else None,
            )

    def batch_buffers(self, n: int) -> tuple[Any, Any, Any] | None:
        if self.buffers is None or n > self.batch_size:
            return None
        x, y, w = self.buffers
        return x[:n], y[:n], None if w is None else w[:n]

    def begin_epoch(self) -> None:
        self.totals[:] = 0
        self.frozen = ()  # arrays are re-read from a fresh plan: set_state may have replaced them
        self.revision = -1
        self.refresh()
        if not self.fallback:  # (eager steps record their own kernels)
            for op in ("matmul", "bias_act", "act_backward_bias", *LOSS_OPS[self.kind]):
                self.backend.record_kernel(op, "numba-fused (in the fused step)")

    def refresh(self) -> None:
        """Before an epoch, and before each step where batch callbacks ran: the kernel's
        arguments re-read where the model's constants changed (a slope, the smoothing, a
        dropout rate), or eager steps while its plan is no longer fused (a callback's change).
        Nothing is compared unless a hyperparameter was set since (``fastnet.revision``)."""
        if revision() == self.revision:
            return
        self.revision = revision()
        frozen = self.model._frozen_constants()
        if frozen == self.frozen:
            return
        self.frozen, plan = frozen, self.model.step_plan()
        self.fallback = fused_step_reason(plan)
        if self.fallback and self.required:
            from fastnet.backends.graph_step import CaptureRequiredError

            raise CaptureRequiredError(
                f"a compiled step was required (compiled=True), but {self.fallback}"
            )
        self.model.step_description = (
            f"eager ({self.fallback})" if self.fallback else self.description
        )
        self.backend.record_kernel("train_step", self.model.step_description)
        if not self.fallback:
            self._read(plan)

    def _read(self, plan: StepPlan) -> None:
        layers, drops = plan.dense_stack()  # type: ignore[misc]
        self.alphas = tuple(self.dtype.type(layer.alpha) for layer in layers)
        self._read_loss(plan)
        self._dropout_arguments(drops)
        self.weights = tuple(layer.weight for layer in layers)
        self.dws = tuple(layer.weight_grad for layer in layers)
        self.biases = tuple(
            np.zeros(w.shape[1], self.dtype) if layer.bias is None else layer.bias
            for layer, w in zip(layers, self.weights)
        )
        self.dbs = tuple(
            np.empty(w.shape[1], self.dtype) if layer.bias_grad is None else layer.bias_grad
            for layer, w in zip(layers, self.weights)
        )

    def _read_loss(self, plan: StepPlan) -> None:
        self.kind, self.scale = LOSS_KINDS[plan.loss.fused], plan.loss.scale
        self.smoothing = plan.loss.label_smoothing

    def _dropout_arguments(self, drops: tuple) -> None:
        """The kernel's dropout arguments for the layers' current rates (a callback may change
        them between epochs): streams, thresholds, scales and mask/output buffers."""
        rates = tuple(0.0 if d is None else d.rate for d in drops)
        if rates != self.drop_rates:
            none = np.empty((0, 0), self.dtype)  # no dropout before this layer
            masks = tuple(
                none if rate == 0 else np.empty((self.batch_size, rows), self.dtype)
                for rate, (rows, _) in zip(rates, self.widths)
            )
            self.masks, self.dropped = masks, tuple(np.empty_like(m) for m in masks)
            self.drop_rates = rates
        no_stream = np.zeros(2, np.int64)
        self.drops = (
            tuple(no_stream if d is None else d.stream for d in drops),
            tuple(np.uint64(drop_threshold(rate)) for rate in rates),
            tuple(self.dtype.type(1.0 / (1.0 - rate)) for rate in rates),
            self.masks,
            self.dropped,
        )

    def __call__(self, xb: Any, yb: Any, wb: Any = None) -> None:
        if xb.shape[0] > self.batch_size:
            raise ValueError(f"batch of {xb.shape[0]} rows exceeds the step's {self.batch_size}")
        self.model.arena.write_lr()
        if self.fallback:
            self.model.train_step(xb, yb, wb, totals=self.totals)
            return
        x = np.ascontiguousarray(xb, self.dtype)
        if yb.ndim == 1 and self.kind == 0:
            labels, targets = np.ascontiguousarray(yb, np.int64), self.no_targets
        else:  # (sigmoid, squared error: the targets of one output may come flat)
            targets = np.ascontiguousarray(yb.reshape(len(yb), -1), self.dtype)
            labels = self.no_labels
        w = self.no_weights if wb is None else np.ascontiguousarray(wb, self.dtype)
        self.kernel(
            x,
            labels,
            targets,
            w,
            self.smoothing,
            self.weights,
            self.biases,
            self.codes,
            self.alphas,
            self.outs,
            self.dzs,
            self.dxs,
            self.dws,
            self.dbs,
            self.totals,
            self.drops,
            self.kind,
            self.scale,
        )
        self.model.arena.update()

    def end_epoch(self) -> tuple[Any, Any]:
        return self.totals[0], (self.totals[1] if self.model.loss.counts_correct else None)

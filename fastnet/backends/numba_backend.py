"""The Numba backend: BLAS matmuls plus fused JIT kernels for every elementwise hot path.

Kernels live in ``fastnet.kernels.numba_cpu``. This class overrides only the hot paths and falls
back to the NumPy reference (``super()``) for dtypes and layouts its kernels do not cover.
Size thresholds below were measured with ``bench/`` on the 2-core CI-class machine.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fastnet.backends.base import FLOAT_DTYPES, Act, Backend, contiguous_floats, labels_fit


def _blas_ready(a: Any, b: Any, out: Any) -> bool:
    """What numba's ``np.dot(a, b, out)`` takes: 2-D operands of matching shapes and one float
    dtype, ``a`` and ``b`` C- or F-contiguous (transposed views), ``out`` C-contiguous."""
    if out is None or not (a.ndim == b.ndim == out.ndim == 2):
        return False
    operands = all(x.dtype == out.dtype and (x.flags.c_contiguous or x.flags.f_contiguous)
                   for x in (a, b))
    return (operands and out.dtype in FLOAT_DTYPES and out.flags.c_contiguous
            and a.shape[1] == b.shape[0] and out.shape == (a.shape[0], b.shape[1]))


def _same_shape(*arrays: Any) -> bool:
    shape = arrays[0].shape
    return all(a.shape == shape for a in arrays[1:])


class NumbaBackend(Backend):
    """NumPy arrays; fused ``@njit(cache=True)`` kernels for bias+activation, activation
    backward+bias grad, softmax cross-entropy and optimizer updates."""

    name = "numba"
    #: element count from which the parallel (threaded) flavour of a kernel is used. Below it,
    #: numba's threads only fight OpenBLAS's spinning workers for the 2 cores (bench/).
    parallel_min_elements = 1 << 20

    def __init__(self) -> None:
        super().__init__()
        # Sleeping (not spinning) OpenMP workers between kernels leave the cores to BLAS.
        # Only effective before numba's first parallel launch; a user's setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from fastnet.kernels import numba_cpu

        self.k = numba_cpu
        self._update_kernels = {
            rule: (getattr(numba_cpu, f"{rule}_update"),
                   getattr(numba_cpu, f"{rule}_update_parallel"))
            for rule in ("sgd", "momentum", "adagrad", "rmsprop", "adam")
        }
        self._empty_bias: dict[np.dtype, np.ndarray] = {}
        self._zero_bias: dict[tuple, np.ndarray] = {}

    def device_info(self) -> str:
        import numba

        return f"CPU, {numba.get_num_threads()} numba threads"

    def _pick(self, serial: Any, parallel: Any, a: Any) -> Any:
        return parallel if a.size >= self.parallel_min_elements else serial

    # ------------------------------------------------------------------ matmul
    def matmul(self, a: Any, b: Any, out: Any = None, precision: str = "fp32") -> Any:
        if out is None and a.ndim == b.ndim == 2:
            out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
        if not _blas_ready(a, b, out):
            return super().matmul(a, b, out, precision)
        self.k.matmul(a, b, out)
        self._ran("matmul", "blas (numba)")
        return out

    # ------------------------------------------------------------------ dense layer hooks
    def bias_act(self, z: Any, b: Any, activation: Act, alpha: float = 0.01) -> Any:
        if b is None or z.ndim != 2 or b.shape != (z.shape[1],) or not contiguous_floats(z, b):
            return super().bias_act(z, b, activation, alpha)
        kernel = self._pick(self.k.bias_act, self.k.bias_act_parallel, z)
        if activation == Act.TANH:  # numba's scalar tanh does not vectorize: 5.5x NumPy's time
            kernel(z, b, int(Act.LINEAR), z.dtype.type(alpha))
            np.tanh(z, out=z)
        else:
            kernel(z, b, int(activation), z.dtype.type(alpha))
        self._ran("bias_act", "numba-fused")
        return z

    def act_backward_bias(
        self, y: Any, dy: Any, activation: Act, alpha: float, dz: Any = None, db: Any = None
    ) -> Any:
        if dz is None:
            dz = np.empty_like(dy, order="C")
        if (
            y.ndim != 2
            or not _same_shape(y, dy, dz)
            or (db is not None and db.shape != (y.shape[1],))
            or not contiguous_floats(y, dy, dz, *([db] if db is not None else []))
        ):
            return super().act_backward_bias(y, dy, activation, alpha, dz, db)
        bias_grad = db if db is not None else self._no_bias(dy.dtype)
        kernel = self._pick(self.k.act_backward_bias, self.k.act_backward_bias_parallel, dy)
        kernel(y, dy, int(activation), dy.dtype.type(alpha), dz, bias_grad)
        self._ran("act_backward_bias", "numba-fused")
        return dz

    def _no_bias(self, dtype: np.dtype) -> np.ndarray:
        if dtype not in self._empty_bias:
            self._empty_bias[dtype] = np.empty(0, dtype=dtype)
        return self._empty_bias[dtype]

    # ------------------------------------------------------------------ activations
    def activation(self, x: Any, activation: Act, alpha: float = 0.01, out: Any = None) -> Any:
        if out is None:
            out = np.empty_like(x, order="C")
        if (
            x.ndim != 2
            or out.shape != x.shape
            or not contiguous_floats(out)
            or x.dtype != out.dtype
            or activation == Act.TANH  # NumPy's vectorized tanh is 7x faster
        ):
            return super().activation(x, activation, alpha, out)
        key = (x.shape[1], x.dtype)
        if key not in self._zero_bias:
            self._zero_bias[key] = np.zeros(x.shape[1], dtype=x.dtype)
        out[...] = x
        kernel = self._pick(self.k.bias_act, self.k.bias_act_parallel, out)
        kernel(out, self._zero_bias[key], int(activation), out.dtype.type(alpha))
        self._ran("activation", "numba-fused")
        return out

    def activation_backward(
        self, y: Any, dy: Any, activation: Act, alpha: float = 0.01, out: Any = None
    ) -> Any:
        if (
            y.ndim != 2
            or not _same_shape(y, dy, *([out] if out is not None else []))
            or not contiguous_floats(y, dy)
            or (out is not None and not contiguous_floats(y, out))
        ):
            return super().activation_backward(y, dy, activation, alpha, out)
        return self.act_backward_bias(y, dy, activation, alpha, out, None)

    # ------------------------------------------------------------------ loss
    def softmax_xent(
        self,
        logits: Any,
        labels: Any,
        dlogits: Any = None,
        loss_out: Any = None,
        loss_scale: float | None = None,
        weights: Any = None,
        label_smoothing: float = 0.0,
    ) -> tuple[Any, Any]:
        if (
            labels.ndim != 1
            or logits.ndim != 2
            or labels.dtype.kind not in "iu"
            or logits.dtype not in FLOAT_DTYPES
            or label_smoothing
        ):
            return super().softmax_xent(
                logits, labels, dlogits, loss_out, loss_scale, weights, label_smoothing
            )
        logits = np.ascontiguousarray(logits)
        labels = np.ascontiguousarray(labels)
        n, m = logits.shape
        if labels.shape[0] != n:
            raise ValueError(f"softmax_xent: {n} rows of logits but {labels.shape[0]} labels")
        if not self.k.labels_in_range(labels, m):
            raise ValueError(
                f"softmax_xent: labels must be in [0, {m}), got range "
                f"[{labels.min()}, {labels.max()}]"
            )
        if (
            dlogits is None
            or dlogits.shape != logits.shape
            or not contiguous_floats(logits, dlogits)
        ):
            dlogits = np.empty_like(logits)
        if weights is None:
            w = self._no_bias(logits.dtype)
        else:
            if weights.shape != (n,):
                raise ValueError(f"softmax_xent: {n} rows of logits but weights {weights.shape}")
            w = np.ascontiguousarray(weights, dtype=logits.dtype)
        inv_n = logits.dtype.type(1.0 / n)
        kernel = self._pick(self.k.softmax_xent, self.k.softmax_xent_parallel, logits)
        loss = kernel(logits, labels, dlogits, inv_n, logits.dtype == np.float32, w)
        self._ran("softmax_xent", "numba-fused")
        if loss_out is None:
            return logits.dtype.type(loss), dlogits
        loss_out += (1.0 if loss_scale is None else loss_scale * n) * loss
        return loss_out, dlogits

    def count_correct(self, logits: Any, labels: Any, out: Any = None) -> Any:
        if not labels_fit(logits, labels):
            return super().count_correct(logits, labels, out)
        hits = self.k.count_correct(np.ascontiguousarray(logits), np.ascontiguousarray(labels))
        if out is None:
            return hits
        out[...] = hits
        return out

    # ------------------------------------------------------------------ compiled step
    def compile_step(self, model: Any, batch_size: int) -> tuple[Any, str]:
        """A fused step (``fastnet.backends.numba_step``) when the model qualifies."""
        from fastnet.backends.numba_step import FusedDenseStep, fused_step_reason

        reason = fused_step_reason(model)
        if reason:
            return None, reason
        return FusedDenseStep(model, batch_size), FusedDenseStep.description

    # ------------------------------------------------------------------ optimizer updates
    def fused_update(self, rule: str, arrays: tuple, scalars: tuple, common: tuple) -> bool:
        """``kernels.<rule>_update`` over flat ``arrays`` with ``scalars`` in the parameter
        dtype; declines (reference) for other layouts or dtypes and mismatched lengths, which
        the unchecked kernels must never see."""
        if rule not in self._update_kernels:
            return False
        if not contiguous_floats(*arrays) or not _same_shape(*arrays):
            return False
        wd, n_decay, grad_scale, clip_value, shrink = common
        p = arrays[0]
        size = int(p.size)
        n_decay = size if n_decay is None else min(max(int(n_decay), 0), size)
        serial, parallel = self._update_kernels[rule]
        kernel = parallel if size >= self.parallel_min_elements else serial
        t = p.dtype.type
        clip = np.inf if clip_value is None else clip_value
        flat = [a.reshape(-1) for a in arrays]
        kernel(*flat, *[s if s.__class__ is bool else t(s) for s in scalars], t(wd), n_decay,
               t(grad_scale), t(clip), t(shrink))
        self._ran(f"update_{rule}", "numba-fused")
        return True

    def sum_squares(self, g: Any) -> float:
        if not contiguous_floats(g):
            return super().sum_squares(g)
        return float(self.k.sum_squares(g.reshape(-1)))

"""The NumPy backend: the reference implementation in ``base.Backend``; only the step scalars
are advanced in host floats (they live in host memory here)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from fastnet.backends.base import Act, Backend


class NumpyBackend(Backend):
    """Pure NumPy (BLAS for matmul); the reference every other backend is tested against."""

    name = "numpy"
    #: run the mixed-precision policies through the reference ops on float16 / bfloat16
    #: (ml_dtypes) arrays: slower than float32 here, for checking a policy's numerics on a CPU
    #: (``fastnet.bench.mixed_accuracy``, the tests); off, the policies are refused
    emulate_mixed = False

    def check_policy(self, policy: str) -> Any:
        if not self.emulate_mixed:
            return super().check_policy(policy)
        from fastnet.mixed import bfloat16

        return np.dtype(np.float16) if policy == "mixed_float16" else bfloat16()

    def infer(
        self, plan: Any, x: Any, probabilities: bool, validate: Callable[[], None] | None = None
    ) -> Any:
        """A Dense stack's outputs (and predictions) in one loop of NumPy calls, the layers'
        own arithmetic in their order, without their per-layer checks, buffers and kernel
        notes: one row of the default model, AMD EPYC: 48 against 56 us. ``validate``: as
        ``Backend.infer``'s (or for ``x`` itself, where the products are not narrower)."""
        layers = plan.dense_layers(inference=True)
        predictions = plan.loss.predictions if probabilities else "identity"
        if (
            layers is None
            or x.ndim != 2
            or x.dtype != np.dtype(plan.dtype)
            or predictions not in ("softmax", "sigmoid", "identity")
        ):
            return None
        self.record_kernel("matmul", "blas (fused inference)")
        after = validate if layers[0].weight.shape[1] < x.shape[1] else None  # (narrower)
        if validate is not None and after is None and not self.all_finite(x):
            validate()
        h = x
        for layer in layers:
            with np.errstate(invalid="ignore" if after is not None else None):  # (inf * 0)
                h = np.matmul(h, layer.weight)
            if after is not None and not self.all_finite(h):
                after()
            after = None
            if layer.bias is not None:
                h += layer.bias
            self._activate_inplace(h, layer.activation, layer.alpha)
        if predictions == "softmax":
            return self.softmax(h)
        if predictions == "sigmoid":
            return self._activate_inplace(h, Act.SIGMOID, 0.0)
        return h

    def advance_scalars(self, s: Any, checks: Any, constants: tuple) -> None:
        """``Backend.advance_scalars`` in Python floats, the same float64 arithmetic: a
        dozen 0-d array operations took 0.1 ms a step, this takes a few microseconds."""
        self.record_kernel("advance_scalars")
        s[6] = checks[1] > 0
        if s[6]:  # a mixed-precision step with overflowed gradients: skipped
            return
        eps, beta1, beta2, bias_correction, decoupled_wd, clip_norm = constants
        t, lr = float(s[1]) + 1.0, float(s[0])
        step, eps_t = lr, float(eps)
        if bias_correction:
            correction = math.sqrt(1 - beta2**t)
            step = lr * correction / (1 - beta1**t)
            eps_t = eps if bias_correction == 2 else eps * correction  # 2: eps hat
        gscale = 1.0
        if clip_norm:
            scale = clip_norm / (math.sqrt(float(checks[0])) + 1e-6)
            gscale = scale if scale < 1.0 or math.isnan(scale) else 1.0  # NaN stays visible
        s[1:6] = (t, step, eps_t, 1 - lr * decoupled_wd, gscale)

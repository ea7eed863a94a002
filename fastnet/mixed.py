"""Mixed precision: half-precision compute on float32 master weights, and fp16's dynamic loss
scaling, on the device.

With ``dtype="mixed_float16"`` or ``"mixed_bfloat16"`` (Keras's policy names) parameters,
gradients and optimizer slots stay float32 in the arena (the master copy). Layers compute with
half copies of the parameters (``Parameter.compute``), refreshed after every optimizer update,
on half activations; matmuls and reductions accumulate in float32 and the loss (softmax-CE)
runs in float32 on float32 logits.

float16 has 5 exponent bits: gradients below ~6e-8 vanish. ``LossScaler`` multiplies the loss
gradient by a scale ``S`` before backward; the optimizer step divides the float32 gradients by
``S`` and counts non-finite ones. A step with any skips the whole update (parameters, slots and
step counts unchanged) and halves ``S``; after ``growth_interval`` clean steps ``S`` doubles.
Scale, clean-step count and the check live in device arrays and run as backend ops, so a
captured step replays them with no host sync. bfloat16 has float32's exponent range: no scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastnet.revision import bump

#: indices into ``LossScaler.state``
SCALE, GOOD_STEPS = range(2)


def bfloat16() -> np.dtype:
    """NumPy's bfloat16 (from ``ml_dtypes``, which JAX also uses); an error naming the package
    where it is missing."""
    try:
        import ml_dtypes
    except ImportError:
        raise ValueError(
            "dtype='mixed_bfloat16' needs the ml_dtypes package (bfloat16 arrays; "
            "pip install ml_dtypes)"
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


class LossScaler:
    """fp16's dynamic loss scale (PyTorch's ``GradScaler`` and Keras's ``LossScaleOptimizer``
    defaults): start at ``initial_scale``, halve on overflow, double after ``growth_interval``
    clean steps. ``state`` is the device array ``[scale, clean steps]`` (float64), saved in
    checkpoints as ``amp/loss_scaler``."""

    def __setattr__(self, key: str, value: Any) -> None:
        super().__setattr__(key, value)  # (a compiled step bakes the constants in)
        bump()

    def __init__(
        self,
        backend: Any,
        initial_scale: float = 2.0**15,
        growth_interval: int = 2000,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
    ) -> None:
        if not (np.isfinite(initial_scale) and initial_scale > 0):
            raise ValueError(f"initial_scale must be a positive number, got {initial_scale!r}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int):
            raise ValueError(f"growth_interval must be a positive integer, got {growth_interval!r}")
        if growth_interval <= 0 or not growth_factor > 1 or not 0 < backoff_factor < 1:
            raise ValueError(
                "LossScaler needs growth_interval > 0, growth_factor > 1 and 0 < backoff_factor"
                f" < 1, got {growth_interval}, {growth_factor}, {backoff_factor}"
            )
        self.backend, self.initial_scale = backend, float(initial_scale)
        self.growth_interval = growth_interval
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.state = backend.asarray(np.array([initial_scale, 0.0]), np.float64)

    @property
    def scale(self) -> float:
        """The current scale (read from the device: a sync on GPUs)."""
        return float(self.backend.to_numpy(self.state)[SCALE])

    def settings(self) -> dict[str, float]:
        """The constructor's arguments (``Sequential(loss_scale=...)``, saved in configs)."""
        return {
            "initial_scale": self.initial_scale,
            "growth_interval": self.growth_interval,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
        }

    def constants(self) -> tuple[int, float, float]:
        """What a captured step bakes in (a change captures again)."""
        return (self.growth_interval, self.growth_factor, self.backoff_factor)

    def unscale(self, grads: Any, checks: Any) -> None:
        """Divide a group's float32 gradients by the scale, counting non-finite ones into
        ``checks[1]`` (``ParameterArena.checks``)."""
        self.backend.unscale(grads, self.state, checks)

    def advance(self, checks: Any) -> None:
        """After the update: halve the scale if this step overflowed, else count a clean step
        (and grow the scale after ``growth_interval`` of them)."""
        self.backend.update_loss_scale(self.state, checks, *self.constants())
